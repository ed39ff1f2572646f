"""The page, end to end, in real headless Chromium (Debian's, at /usr/bin/chromium) through Playwright.

Every request the page makes is recorded; one to anywhere but the test server fails the test, so the page
is proven to work offline. A screenshot of each test's final page is kept under test-artifacts/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from conftest import SEED
from playwright.sync_api import Page

from attention_encodings import analyze, display

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 60_000
ACCENT = "#d9480f"
HOVER = "#1971c2"


@pytest.fixture
def page(browser, server, request) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def only_the_test_server(route):
        if route.request.url.startswith(server.url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_test_server)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    ARTIFACTS.mkdir(exist_ok=True)
    opened.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    context.close()
    assert outside == [], f"the page reached outside the server: {outside}"
    assert errors == [], f"JavaScript errors: {errors}"


def open_page(page: Page, url: str) -> None:
    """Load the page and wait until its first analysis is drawn."""
    with page.expect_response("**/api/charts"):
        page.goto(url)
    settle(page)


def settle(page: Page) -> None:
    page.wait_for_function("!document.body.classList.contains('busy')")
    page.locator("figure[data-chart=neighbours] svg").wait_for(state="attached")  # (hidden when the head's table shows)


def analyse(page: Page) -> None:
    with page.expect_response("**/api/charts"):
        page.click("#analyse")
    settle(page)


def chart_text(page: Page, name: str) -> str:
    """Every text in one chart's SVG, a line each."""
    return "\n".join(page.locator(f"figure[data-chart={name}] svg text").all_text_contents())


def cosine_row(page: Page) -> list[str]:
    """The cosine row of the neighbour table, layer by layer (its only cells with three decimals)."""
    texts = page.locator("figure[data-chart=neighbours] svg g.mark-text text").all_text_contents()
    return [t for t in texts if re.fullmatch(r"-?\d\.\d{3}", t)]


def test_page_analyses_a_typed_sentence(page, server, bundled):
    open_page(page, server.url)
    assert page.input_value("#text") == SEED
    assert "all-MiniLM-L6-v2 (bundled)" in page.inner_text("#model-line")
    assert "named explicitly" in page.inner_text("#model-line")
    assert "on cpu" in page.inner_text("#model-line")
    text = "The quick brown fox jumps over the lazy dog."
    page.fill("#text", text)
    analyse(page)
    chips = page.locator(".chip").all_inner_texts()
    assert [c.split("\n")[-1].strip() for c in chips[:5]] == ["[CLS]", "the", "quick", "brown", "fox"]
    assert page.locator(".chip.selected").inner_text().endswith("the")
    assert "token 1 the" in chart_text(page, "cosine") and "token 1 the" in chart_text(page, "neighbours")
    assert "text=The+quick+brown+fox" in page.url and "token=1" in page.url


def test_clicking_a_token_changes_charts_and_table_without_a_request(page, server, bundled):
    open_page(page, server.url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.click(".chip[data-index='8']")
    page.wait_for_function("document.querySelector('figure[data-chart=neighbours] svg').textContent.includes('token 8 flies')")
    assert "selected" in page.get_attribute(".chip[data-index='8']", "class")
    for name in ("cosine", "rank", "overlap", "zscore", "neighbours"):
        assert "token 8 flies" in chart_text(page, name)
    expected = analyze(SEED, bundled)
    assert cosine_row(page) == [f"{v:.3f}" for v in expected.cosine.values[:, 8]]
    last = expected.neighbours(6, 8)[1]
    assert f"{last.text}  {last.cosine:.2f}" in chart_text(page, "neighbours")
    assert "token=8" in page.url and requests == []
    # the highlighted line is the selected token's: its label at the line's end names it
    assert page.locator(f"figure[data-chart=cosine] path[stroke='{ACCENT}']").count() == 1


def test_hovering_a_token_highlights_it_in_every_chart(page, server):
    open_page(page, server.url)
    assert page.locator(f"figure[data-chart=cosine] path[stroke='{HOVER}']").count() == 0
    page.hover(".chip[data-index='4']")
    page.wait_for_function(f"document.querySelectorAll(\"figure[data-chart=cosine] path[stroke='{HOVER}']\").length > 0")
    assert "hovered" in page.get_attribute(".chip[data-index='4']", "class")
    for name in ("rank", "overlap", "cosine_heatmap"):
        assert page.locator(f"figure[data-chart={name}] path[stroke='{HOVER}']").count() > 0, name
    page.hover("h1")
    page.wait_for_function(f"document.querySelectorAll(\"figure[data-chart=cosine] path[stroke='{HOVER}']\").length == 0")
    # hovering a token's row in a heatmap highlights it everywhere too
    cell = page.locator("figure[data-chart=cosine_heatmap] svg g.mark-rect path").nth(21)  # layer 1, token 7
    cell.scroll_into_view_if_needed()
    box = cell.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('.chip.hovered') !== null")
    assert page.locator(".chip.hovered").get_attribute("data-index") == "7"
    assert page.locator(f"figure[data-chart=rank] path[stroke='{HOVER}']").count() > 0


def test_switching_the_tap_changes_the_numbers(page, server, bundled):
    open_page(page, f"{server.url}/#token=2")
    before = cosine_row(page)
    assert before == [f"{v:.3f}" for v in analyze(SEED, bundled).cosine.values[:, 2]]
    with page.expect_response("**/api/charts"):
        page.select_option("#tap", "resid_post")
    settle(page)
    page.wait_for_function("document.querySelector('figure[data-chart=neighbours] svg').textContent.includes('token 2 flies')")
    after = cosine_row(page)
    assert after != before
    assert after == [f"{v:.3f}" for v in analyze(SEED, bundled, tap="resid_post").cosine.values[:, 2]]
    assert "tap=resid_post" in page.url and "token=2" in page.url


def test_downloads_csv_json_and_charts(page, server, bundled, tmp_path):
    open_page(page, f"{server.url}/#tap=attn_ln&top_k=50")
    with page.expect_download() as csv_download:
        page.click("[data-download=csv]")
    csv_path = tmp_path / "analysis.csv"
    csv_download.value.save_as(csv_path)
    assert csv_download.value.suggested_filename == "attention-encodings-time-flies-like-an.csv"
    frame = pd.read_csv(csv_path)
    expected = analyze(SEED, bundled, tap="attn_ln", top_k=50).to_frame()
    assert list(frame.columns) == list(expected.columns) and len(frame) == len(expected)
    assert frame.token.tolist() == expected.token.tolist()
    assert frame.overlap_next.dropna().astype(int).tolist() == expected.overlap_next.dropna().astype(int).tolist()

    with page.expect_download() as json_download:
        page.click("[data-download=json]")
    data = json.loads(Path(json_download.value.path()).read_text())
    assert (data["tap"], data["top_k"]) == ("attn_ln", 50) and len(data["tokens"]) == 14

    figure = page.locator("figure[data-chart=rank]")
    with page.expect_download() as png:
        figure.locator("[data-chart-download=png]").click()
    assert Path(png.value.path()).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with page.expect_download() as svg:
        figure.locator("[data-chart-download=svg]").click()
    assert svg.value.suggested_filename.endswith("-rank-1.svg")
    assert "token 1 time" in Path(svg.value.path()).read_text()


def test_the_url_restores_the_whole_view(page, server):
    text = "Fruit flies like a banana."
    open_page(page, f"{server.url}/#text={quote(text)}&tap=attn_ln&reference=word&top_k=20&neighbours=5&token=2")
    assert page.input_value("#text") == text
    assert (page.input_value("#tap"), page.input_value("#reference")) == ("attn_ln", "word")
    assert (page.input_value("#top_k"), page.input_value("#neighbours")) == ("20", "5")
    assert page.locator(".chip.selected").inner_text().endswith("flies")
    assert "Nearest 5 vocabulary items" in chart_text(page, "neighbours")
    assert "Overlap: top-20 neighbours kept" in chart_text(page, "overlap")


def test_the_cosine_chart_shows_its_baselines_and_zscore_has_charts(page, server, bundled):
    open_page(page, f"{server.url}/#token=8")
    cosine = chart_text(page, "cosine")
    assert "Selected token's vocabulary mean ± 1 std" in cosine and "Anisotropy of the text" in cosine
    assert page.locator("figure[data-chart=cosine] g.mark-area path").count() == 1  # the ±1 std band
    assert page.locator("#lines figure").evaluate_all("nodes => nodes.map(n => n.dataset.chart)") == [
        "cosine", "rank", "overlap", "zscore"
    ]
    assert "z-score: every token × layer" in chart_text(page, "zscore_heatmap")
    table = page.locator("figure[data-chart=neighbours] svg g.mark-text text").all_text_contents()
    expected = analyze(SEED, bundled)
    assert "zscore" in table and f"{expected.zscore.values[6, 8]:.2f}" in table


def test_normalising_with_the_servers_statistics(page, server, bundled):
    open_page(page, f"{server.url}/#token=2")
    assert page.locator("#stats").is_disabled() and not page.locator("#normalize").is_disabled()
    with page.expect_response("**/api/charts") as answer:
        page.select_option("#normalize", "standardize")
    assert json.loads(answer.value.request.post_data)["stats"] == server.stats[0]
    settle(page)
    assert page.locator("#stats").is_enabled() and "normalize=standardize" in page.url
    expected = analyze(SEED, bundled, normalize="standardize", stats=server.stats[0])
    page.wait_for_function(
        f"document.querySelector('figure[data-chart=neighbours] svg').textContent.includes('{expected.cosine.values[6, 2]:.3f}')"
    )
    assert cosine_row(page) == [f"{v:.3f}" for v in expected.cosine.values[:, 2]]
    with page.expect_response("**/api/charts") as answer:
        page.select_option("#normalize", "none")
    assert "stats" not in json.loads(answer.value.request.post_data)
    settle(page)
    assert page.locator("#stats").is_disabled()


def test_switching_the_model(page, server, tiny_roberta):
    open_page(page, server.url)
    with page.expect_response("**/api/charts"):
        page.select_option("#model", str(tiny_roberta))
    settle(page)
    assert "3 layers" in page.inner_text("#model-line") and "local directory" in page.inner_text("#model-line")
    assert page.locator(".chip").first.inner_text().endswith("<s>")


def test_the_head_lens_on_the_page(page, server, smollm2):
    """SmolLM2 has an output head: its head_rank chart and heatmap appear, and the table switches to the head's
    predictions (the numbers of `analyze()`) and back without asking the server; the address keeps the choice."""
    text = "Fruit flies like a banana."
    open_page(page, f"{server.url}/#model=smollm2&text={quote(text)}&token=1&neighbours=5")
    line = page.inner_text("#model-line")
    assert "SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF, 30 layers, 49,152 vocabulary items" in line
    assert "Note: the embedding reference equals word here" in line
    assert "Head rank: vocabulary items the output head prefers" in chart_text(page, "head_rank")
    assert page.locator("figure[data-chart=head_rank_heatmap] svg").count() == 1
    assert page.is_visible("figure[data-chart=neighbours]") and page.is_hidden("figure[data-chart=predictions]")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.check("input[name=table][value=predictions]")
    page.wait_for_function("!document.querySelector('figure[data-chart=predictions]').hidden")
    assert page.is_hidden("figure[data-chart=neighbours]") and requests == [] and "table=predictions" in page.url
    shown = chart_text(page, "predictions")
    assert "The output head's 5 most probable items per layer" in shown and "token 1 ␣flies" in shown
    expected = analyze(text, smollm2, neighbours=5)
    for layer in (0, 15, 30):
        top = expected.predictions(layer, 1)[0]
        assert f"{display.shown(top.text)}  {top.probability:.2f}" in shown
    page.click(".chip[data-index='4']")
    page.wait_for_function("document.querySelector('figure[data-chart=predictions] svg').textContent.includes('token 4 ␣banana')")
    with page.expect_response("**/api/charts"):
        page.reload()
    settle(page)
    assert page.is_checked("input[name=table][value=predictions]") and page.is_visible("figure[data-chart=predictions]")
    page.check("input[name=table][value=neighbours]")
    page.wait_for_function("!document.querySelector('figure[data-chart=neighbours]').hidden")
    assert "table=" not in page.url


def test_a_model_without_a_head_offers_no_head_table(page, server):
    open_page(page, f"{server.url}/#table=predictions")
    assert page.is_disabled("input[name=table][value=predictions]") and page.is_checked("input[name=table][value=neighbours]")
    assert page.inner_text("#table-note") == "(this model has no output head)"
    assert page.is_visible("figure[data-chart=neighbours]") and page.locator("figure[data-chart=predictions]").count() == 0
    assert page.locator("figure[data-chart=head_rank]").count() == 0
    assert "has no output head (it loads as BertModel)" in page.inner_text("#model-line")


def test_errors_show_inline(page, server):
    open_page(page, server.url)
    page.fill("#text", "   ")
    with page.expect_response("**/api/charts"):
        page.click("#analyse")
    page.locator("#error").wait_for()
    assert page.inner_text("#error") == "Could not analyse: text is empty; give a sentence to analyse"
    page.fill("#text", SEED)
    analyse(page)
    assert page.locator("#error").is_hidden()


def test_api_docs_work_offline(page, server):
    page.goto(f"{server.url}/docs")
    page.locator(".opblock-summary-path[data-path='/api/analyze']").wait_for()
    assert "attention-encodings" in page.inner_text(".swagger-ui .info")
    paths = page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
    assert sorted(paths) == ["/api/analyze", "/api/analyze/csv", "/api/charts", "/api/compare", "/api/models"]


def test_readme_screenshot(page, server):
    """The screenshot the README shows (copied to docs/ by hand): the seed, second "flies" selected."""
    open_page(page, f"{server.url}/#token=8")
    page.hover(".chip[data-index='2']")
    page.wait_for_function(f"document.querySelectorAll(\"figure[data-chart=cosine] path[stroke='{HOVER}']\").length > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "demo.png", full_page=True)
    png = (ARTIFACTS / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG") and int.from_bytes(png[16:20], "big") == 1440


def pair_chips(page: Page, first: int, second: int) -> None:
    """Select `first`, then shift+click `second`, and wait for the pair chart to name both."""
    page.click(f".chip[data-index='{first}']")
    page.click(f".chip[data-index='{second}']", modifiers=["Shift"])
    page.locator("figure[data-chart=similarity] canvas").wait_for()
    page.wait_for_function(
        f"document.querySelector('figure[data-chart=pair] svg')?.textContent.includes('and {second} ')"
    )


def canvas_image(page: Page) -> str:
    return page.locator("figure[data-chart=similarity] canvas").evaluate("canvas => canvas.toDataURL()")


def test_shift_click_pairs_two_tokens_and_the_slider_moves_the_layer(page, server):
    open_page(page, server.url)
    with page.expect_response("**/api/charts") as answer:
        pair_chips(page, 2, 8)
    assert answer.value.request.post_data_json["similarity"] is True  # asked for once, on the first pairing
    assert "2 flies and 8 flies" in chart_text(page, "pair")
    assert "paired" in page.get_attribute(".chip[data-index='8']", "class") and "pair=8" in page.url
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.click(".chip[data-index='11']", modifiers=["Shift"])  # a second pairing reads the data the page holds
    page.wait_for_function("document.querySelector('figure[data-chart=pair] svg').textContent.includes('2 flies and 11 banana')")
    before = canvas_image(page)
    slider = page.locator("figure[data-chart=similarity] input[type=range]")
    assert slider.get_attribute("max") == "6" and slider.input_value() == "6"
    slider.fill("2")
    page.wait_for_function(f"document.querySelector('figure[data-chart=similarity] canvas').toDataURL() !== {json.dumps(before)}")
    assert requests == []
    page.click(".chip[data-index='11']", modifiers=["Shift"])  # again: unpaired
    page.locator("#pairs").wait_for(state="hidden")
    assert "pair=" not in page.url and requests == []


LONG = " ".join(["the cat sat on a mat"] * 21)
"""126 words: 128 tokens on the bundled model, the page's limit."""


def test_a_128_token_pair_heatmap_does_not_stall_the_page(page, server):
    open_page(page, f"{server.url}/#text={quote(LONG)}&token=2&pair=8")
    page.locator("figure[data-chart=similarity] canvas").wait_for()
    assert page.locator(".chip").count() == 128
    timings = page.locator("figure[data-chart=similarity]").evaluate(
        """async (figure) => {
          const slider = figure.querySelector("input[type=range]");
          const canvas = figure.querySelector("canvas");
          const times = [];
          for (const layer of [0, 3, 5, 1, 6]) {
            const before = canvas.toDataURL();
            const start = performance.now();
            slider.value = layer;
            slider.dispatchEvent(new Event("input", { bubbles: true }));
            while (canvas.toDataURL() === before) await new Promise((done) => requestAnimationFrame(done));
            times.push(performance.now() - start);
          }
          return times;
        }"""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#pairs").screenshot(path=ARTIFACTS / "pair-128-tokens.png")
    (ARTIFACTS / "slider-128-tokens.json").write_text(json.dumps(timings))
    assert len(timings) == 5 and max(timings) < 5_000, timings  # generous: it redraws in a fraction of that


def test_pin_then_change_the_tap_draws_two_runs_and_the_link_reopens_them(page, server):
    open_page(page, f"{server.url}/#token=8")
    page.click("#pin")
    assert "a.tap=resid_mid" in page.url and page.get_attribute("#pin", "aria-pressed") == "true"
    assert "Run A is pinned" in page.inner_text("#runs-line")
    with page.expect_response("**/api/compare"):
        page.select_option("#tap", "resid_post")
    settle(page)
    page.wait_for_function("document.querySelector('figure[data-chart=cosine] svg')?.textContent.includes('resid_post')")
    lines = chart_text(page, "cosine")
    assert "resid_mid" in lines and "resid_post" in lines and "token 8 flies" in lines  # the legend names the taps
    assert page.locator(f"figure[data-chart=cosine] path[stroke='{ACCENT}']").count() >= 1  # run A's line
    assert page.locator(f"figure[data-chart=cosine] path[stroke='{HOVER}']").count() >= 1  # run B's
    maps = chart_text(page, "cosine_heatmap")
    assert "resid_mid: Cosine to the original encoding" in maps and "resid_post: Cosine to the original encoding" in maps
    assert "run A (resid_mid) with run B (resid_post)" in page.inner_text("#runs-line")
    pair_chips(page, 8, 2)
    shared = page.url
    assert "tap=resid_post" in shared and "a.tap=resid_mid" in shared and "pair=2" in shared

    other = page.context.new_page()
    errors: list[str] = []
    other.on("pageerror", lambda error: errors.append(str(error)))
    with other.expect_response("**/api/compare") as answer:
        other.goto(shared)
    settle(other)
    other.locator("figure[data-chart=similarity] canvas").wait_for()
    body = answer.value.request.post_data_json
    assert [run["tap"] for run in body["runs"]] == ["resid_mid", "resid_post"] and body["runs"][1]["similarity"]
    assert other.input_value("#tap") == "resid_post" and "selected" in other.get_attribute(".chip[data-index='8']", "class")
    assert "run A (resid_mid) with run B (resid_post)" in other.inner_text("#runs-line")
    assert "8 flies and 2 flies" in chart_text(other, "pair")
    other.screenshot(path=ARTIFACTS / "compare-shared-link.png", full_page=True)
    other.close()
    assert errors == []

    page.click("#pin")  # unpin: the current run alone again
    page.wait_for_function("!document.querySelector('figure[data-chart=cosine] svg').textContent.includes('resid_mid')")
    assert "a.tap" not in page.url and page.locator("#runs-line").is_hidden()


def test_two_models_pinned_match_tokens_by_text_and_name_the_rest(page, server, tiny_roberta):
    text = f"{SEED} Unbelievably, bananas fly."
    open_page(page, f"{server.url}/#text={quote(text)}")
    page.click("#pin")
    with page.expect_response("**/api/compare"):
        page.select_option("#model", str(tiny_roberta))
    settle(page)
    page.locator("#note").wait_for()
    note = page.inner_text("#note")
    assert "not in every run" in note and "##bel" in note and "bananas" in note
    assert page.locator(".chip").first.inner_text().endswith("[CLS]")  # the chips are run A's tokens
    page.click(".chip[data-index='8']")
    page.wait_for_function("document.querySelector('figure[data-chart=cosine] svg').textContent.includes('token 8 flies')")
    assert page.locator(f"figure[data-chart=cosine] path[stroke='{HOVER}']").count() >= 1  # run B's matched "flies"


def open_heads(page: Page) -> dict:
    """Open the panel of heads (one request, with the attribution) and wait for its heatmap; the request's body."""
    with page.expect_response("**/api/charts") as answer:
        page.click("#heads-toggle")
    settle(page)
    page.locator("figure[data-chart=heads_shares] svg").wait_for()
    return answer.value.request.post_data_json


def head_cell(page: Page, layer: int, part: int, parts: int, run: int = 0):
    """The heatmap cell of one part at one layer (cells are drawn layer by layer, parts in the tap's order)."""
    cells = page.locator("figure[data-chart=heads_shares] svg g.mark-rect").nth(2 * run).locator("path")
    return cells.nth((layer - 1) * parts + part)


def click_centre(page: Page, locator) -> None:
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def chip_attention(page: Page) -> list[float]:
    return [float(v) for v in page.locator(".chip").evaluate_all("chips => chips.map(c => c.dataset.attention)")]


def test_heads_panel_draws_and_a_click_on_a_head_shades_the_chips_without_a_request(page, server, bundled):
    open_page(page, f"{server.url}/#token=8")
    assert page.is_hidden("#heads")
    body = open_heads(page)
    assert body["attribution"] is True and "heads=1" in page.url
    found = analyze(SEED, bundled, attribution=True).attribution
    parts = len(found.components)
    change, shares = chart_text(page, "heads_change"), chart_text(page, "heads_shares")
    assert "The cosine's change per layer, by part" in change and "token 8 flies" in change
    assert all(name in change for name in ("residual", "heads", "other parts"))
    assert "Which parts moved its cosine" in shares and "head 11" in shares and "attn_bias" in shares
    cells = page.locator("figure[data-chart=heads_shares] svg g.mark-rect").first.locator("path")
    assert cells.count() == len(found.layers) * parts  # the selected token's layers × parts
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    click_centre(page, head_cell(page, 2, 2, parts))  # layer 2, head 1
    page.wait_for_function("document.querySelectorAll('.chip.attended').length === 14")
    assert "head=2.1" in page.url
    assert chip_attention(page) == pytest.approx(found.attention[1, 1, 8], abs=1e-4)
    page.wait_for_function("document.querySelector('figure[data-chart=heads_sources] svg')?.textContent.includes('head 2.1')")
    assert page.locator(f"figure[data-chart=heads_shares] path[stroke='{ACCENT}']").count() == 1

    page.keyboard.press("ArrowRight")  # the heatmap has the focus: head 2 of layer 2, then layer 3
    page.keyboard.press("ArrowDown")
    page.wait_for_function("location.hash.includes('head=3.2')")
    page.wait_for_function("document.querySelector('figure[data-chart=heads_sources] svg').textContent.includes('head 3.2')")
    assert chip_attention(page) == pytest.approx(found.attention[2, 2, 8], abs=1e-4)

    page.click(".chip[data-index='2']")  # another token: its own attention row, from the data the page holds
    page.wait_for_function("document.querySelector('figure[data-chart=heads_change] svg').textContent.includes('token 2 flies')")
    assert chip_attention(page) == pytest.approx(found.attention[2, 2, 2], abs=1e-4)

    cell = head_cell(page, 5, 4, parts)  # hovering head 3 of layer 5 outlines it and marks its layer
    cell.hover()
    page.wait_for_function(f"document.querySelectorAll(\"figure[data-chart=heads_shares] path[stroke='{HOVER}']\").length === 1")
    assert page.locator(f"figure[data-chart=heads_change] g.mark-rule [stroke='{HOVER}']").count() == 1
    tooltip = page.locator("#vg-tooltip-element")
    tooltip.wait_for(state="visible")
    shown = tooltip.inner_text()
    head = next(h for h in found.heads(5, 2) if h.head == 3)
    assert f"{head.share:+.4f}".replace("-", "\u2212") in shown  # d3 writes a minus sign
    assert "rank without it" in shown and str(head.ablation_rank) in shown
    assert ", ".join(f"{display.shown(s.text)} {s.weight:.2f}" for s in head.sources) in shown
    page.hover(".chip[data-index='4']")  # a hovered token is outlined among the head's sources
    page.wait_for_function(f"document.querySelectorAll(\"figure[data-chart=heads_sources] path[stroke='{HOVER}']\").length === 2")
    assert requests == []


def test_a_shared_link_reopens_the_head(page, server, bundled):
    with page.expect_response("**/api/charts") as answer:
        page.goto(f"{server.url}/#token=8&head=2.1")
    settle(page)
    assert answer.value.request.post_data_json["attribution"] is True
    assert page.is_visible("#heads") and page.get_attribute("#heads-toggle", "aria-pressed") == "true"
    page.wait_for_function("document.querySelector('figure[data-chart=heads_sources] svg')?.textContent.includes('head 2.1')")
    found = analyze(SEED, bundled, attribution=True).attribution
    assert chip_attention(page) == pytest.approx(found.attention[1, 1, 8], abs=1e-4)
    page.click("#heads-toggle")  # closing keeps the data: no request, no shading, out of the address
    assert page.is_hidden("#heads") and page.locator(".chip.attended").count() == 0 and "head=" not in page.url


def test_pinned_runs_show_their_heads_side_by_side(page, server, bundled):
    open_page(page, f"{server.url}/#token=8&heads=1")
    page.locator("figure[data-chart=heads_shares] svg").wait_for()
    page.click("#pin")
    with page.expect_response("**/api/compare") as answer:
        page.select_option("#tap", "resid_post")
    settle(page)
    assert [run["attribution"] for run in answer.value.request.post_data_json["runs"]] == [True, True]
    page.wait_for_function("document.querySelector('figure[data-chart=heads_shares] svg')?.textContent.includes('resid_post')")
    shares = chart_text(page, "heads_shares")
    assert "resid_mid: Which parts moved its cosine" in shares and "resid_post: Which parts moved its cosine" in shares
    assert "mlp" in shares  # resid_post has the MLP among its parts
    parts = len(analyze(SEED, bundled, tap="resid_post", attribution=True).attribution.components)
    click_centre(page, head_cell(page, 3, 1, parts, run=1))  # run B's head 0 of layer 3 chooses it for both runs
    page.wait_for_function("location.hash.includes('head=3.0')")
    assert page.locator(f"figure[data-chart=heads_shares] path[stroke='{ACCENT}']").count() == 2
    assert page.locator(".chip.attended").count() == 14


def test_a_long_text_draws_the_heads_with_its_note(page, server):
    """Past 64 tokens the attribution has no per-source detail: the panel says so, and a chosen head shades nothing."""
    open_page(page, f"{server.url}/#text={quote(LONG)}&token=2&head=3.1")
    page.locator("figure[data-chart=heads_shares] svg").wait_for()
    assert "up to 64 tokens" in page.inner_text("#heads-note")
    assert page.locator(f"figure[data-chart=heads_shares] path[stroke='{ACCENT}']").count() == 1
    assert page.locator(".chip.attended").count() == 0


def test_the_heads_of_smollm2(page, server, smollm2):
    """A decoder with grouped-query attention: 9 query heads; a token attends only to itself and the tokens before it."""
    text = "Fruit flies like a banana."
    open_page(page, f"{server.url}/#model=smollm2&text={quote(text)}&token=1&head=1.6")
    page.wait_for_function("document.querySelector('figure[data-chart=heads_sources] svg')?.textContent.includes('head 1.6')")
    found = analyze(text, smollm2, attribution=True).attribution
    assert found.num_heads == 9 and "head 8" in chart_text(page, "heads_shares")
    shaded = chip_attention(page)
    assert shaded == pytest.approx(found.attention[0, 6, 1], abs=1e-4) and shaded[2:] == [0.0] * (len(shaded) - 2)

"""The `fit-lens` command: a learned lens fitted on a corpus (`corpus.lens_fit`), with corpus mode's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..names import DEFAULT_BATCH_TOKENS
from ..settings import Settings
from .cli import (
    BatchTokensOption,
    EngineOption,
    InputArgument,
    InputFormatOption,
    LimitOption,
    QuietOption,
    RayAddressOption,
    TextFieldOption,
    corpus_progress,
    model_line,
    reach_ray,
    with_settings,
)

TARGET_HELP = (
    "What each layer's translator predicts: final (the last layer's vector as the output head reads it: the tuned "
    "lens, for models with a head) or embedding (the token's own reference row: a probe back to the input)."
)


def register(app: typer.Typer) -> None:
    """Add `fit-lens` to the command line."""

    @app.command("fit-lens")
    @with_settings(only=("model", "tap", "reference", "truncate", "device", "dtype", "threads"))
    def fit_lens_command(
        source: InputArgument,
        out: Annotated[Path, typer.Option("--out", "-o", help="The lens folder (created; rerun the same command to resume).")],
        target: Annotated[str, typer.Option(help=TARGET_HELP)] = "final",
        heldout: Annotated[float, typer.Option(min=0.01, max=0.9, help="The share of texts held out (by a hash of each text) to choose λ and measure the lens.")] = 0.1,
        export: Annotated[
            Optional[tuple[str, Path]],
            typer.Option(
                "--export",
                metavar="tuned-lens DIR",
                help="Also write the lens in the tuned-lens package's layout (params.pt, config.json) to DIR "
                "(decoders, --target final).",
            ),
        ] = None,
        text_field: TextFieldOption = "text",
        input_format: InputFormatOption = "auto",
        limit: LimitOption = None,
        batch_tokens: BatchTokensOption = DEFAULT_BATCH_TOKENS,
        engine: EngineOption = "local",
        ray_address: RayAddressOption = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a lens fitted with other settings in --out.")] = False,
        quiet: QuietOption = False,
        *,
        settings: Settings,
    ) -> None:
        """Fit a learned lens (a per-layer affine translator, in closed form) on a corpus: lens.safetensors,
        lens.json, eval.csv and report.html in --out; use it with --lens in analyze, plot, corpus and serve."""
        reach_ray(engine, ray_address)
        from ..corpus.lens_fit import fit_lens
        from ..errors import OptionError
        from ..models import set_threads
        from ..tuned_lens import check_target

        check_target(target)
        if export is not None and export[0] != "tuned-lens":
            raise OptionError(f"unknown export layout {export[0]!r}; the one there is: --export tuned-lens DIR")
        export_dir = None if export is None else export[1]
        say = (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
        used = set_threads(settings.threads)
        with corpus_progress(quiet) as progress:
            result = fit_lens(
                settings, source, out, target=target, heldout=heldout, limit=limit, engine=engine, text_field=text_field,
                format=input_format, batch_tokens=batch_tokens, ray_address=ray_address, overwrite=overwrite,
                export=export_dir, progress=progress, on_model=lambda handle: say(model_line(handle, used)),
                on_note=lambda note: say(f"note: {note}"),
            )
        meta = result.lens.meta
        say(
            f"wrote {out}: a {target} lens at {meta['tap']} over {meta['tokens']['fit']:,} tokens "
            f"({meta['tokens']['heldout']:,} held out); see {out / 'eval.csv'} and {out / 'report.html'}"
            + (f"; tuned-lens layout in {export_dir}" if export_dir is not None else "")
        )

"""`python -m attention_encodings` runs the command line."""

from .faces.cli import main

main()

"""Faces: the ways people reach the tool: the command line, the web server and its page, the notebook display."""

"""Faces: the ways people reach the tool (command line, and later web server and notebook)."""

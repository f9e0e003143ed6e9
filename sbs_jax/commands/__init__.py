"""Command-line entry points (`sbs <verb>`) and their gin wiring.

Commands import the library (model, data, train, checkpoints, export, teacher, sweep, ...); the library never
imports commands (tests/test_layering.py checks it). A library routine that needs a command's behaviour gets a
callable passed down, or spawns the command as a subprocess by module name.
"""

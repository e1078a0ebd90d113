"""The ``ragr`` command line: one small module per command, heavy imports inside command bodies."""

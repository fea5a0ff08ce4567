"""One module per ``hagrid-edge`` subcommand: ``register(subparsers)`` adds its parser and handler.

Modules import heavy libraries (torch, onnxruntime) inside their handlers, so ``--help`` stays fast
and never needs an optional runtime.
"""

"""The ``replyloop`` command line. Each area registers its commands from its own module;
commands import heavy libraries (torch, sentence-transformers) inside the command body."""

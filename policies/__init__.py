"""Default policy files (banned promises, terminology) shipped with replyloop."""

"""One module per op family: each holds its reference, its kernel spec(s) and the public wrapper."""

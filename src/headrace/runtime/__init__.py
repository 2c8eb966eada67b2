"""The engine and its parts: batcher, offset tracker, flow control, decoder."""

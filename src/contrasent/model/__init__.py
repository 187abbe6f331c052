"""The encoder and everything about one model: pooling, the forward passes, input checks,
similarity and exact search, the sentence-transformers folder layout, ONNX, export and the
model card (rendered from a plain dict)."""

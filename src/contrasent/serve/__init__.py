"""Using a trained encoder at scale: bulk embedding into resumable chunks and their merge,
search indexes (exact or faiss) and the search over them."""

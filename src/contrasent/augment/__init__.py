"""Data augmentation as pure functions of their inputs and a generator: text noise (TSDAE,
word deletion and friends) and embedding-level views (ConSERT: cutoff, shuffle, adversarial)."""

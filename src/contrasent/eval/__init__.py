"""Evaluation of an encoder: STS (SentEval-equal), SentEval transfer tasks, diagnostics
(alignment / uniformity), plots and result tables. Reads data, never trains."""

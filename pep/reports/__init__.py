"""Reports: the paper's tables from the metrics files (`pep tables`), the figures (`pep figures`),
reports/README.md that links them, and the check of measured numbers against the expected ones
(`pep check-results`)."""

"""One analysis step: trial records (records.py, from the jobs table or MLflow) -> `analyze` (analyze.py)
-> one typed `StudyAnalysis` (model.py), which the API returns, the CLI and the report render through
one formatting module (format.py), and summary.csv/json dump."""

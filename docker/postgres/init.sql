-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d), as
-- POSTGRES_USER in POSTGRES_DB (krpo): the job database is krpo, Optuna's tables live in its own
-- schema of it, and MLflow gets a database of its own.
CREATE SCHEMA IF NOT EXISTS optuna;
CREATE DATABASE mlflow;

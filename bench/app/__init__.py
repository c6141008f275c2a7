"""The application: command line, Hydra app and runner, records to tables (frame, report), the claim
and its statistics, publishing, status, benchmarks. Built on tunebench.core, never imported by it."""

"""Benchmark support shared by the scripts in benchmarks/ (issue 9): the machine description and result JSON every
benchmark writes, settings validated against schemas/benchmarks.schema.yaml, random-init models on synthetic
proteins (speed and memory do not depend on the weights), and the peak resident memory of a measured block."""

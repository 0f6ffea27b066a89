"""Benchmarks and load generators: commands mounted by the CLI; product packages never import this package."""

"""Benchmarks of Data Pusher (see bench/README.md). Not imported by the application."""

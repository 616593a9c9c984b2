"""Test harness for pgrouter: real PostgreSQL servers, the router as a
subprocess, and a small raw wire-protocol client for the cases drivers hide."""

"""Code generated from protos/ by `make proto`. Do not edit."""

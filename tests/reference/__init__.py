"""Independent, pure-Python readings of the data contract, used as oracles by the e2e tests."""

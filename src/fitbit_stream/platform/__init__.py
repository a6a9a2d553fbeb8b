"""The local platform: a single-node Kafka broker (KRaft) and a PostgreSQL server for e2e tests."""

"""The I/O boundary: the only package that touches readStream/writeStream, Delta, JDBC and Kafka."""

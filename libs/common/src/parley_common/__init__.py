"""What every Parley service needs once: settings, logs, gRPC server, Kafka plumbing, ids."""

//! The PostgreSQL outbox consumer.

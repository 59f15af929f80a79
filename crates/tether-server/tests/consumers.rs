//! The async consumers end to end, against the real services on this machine (started or
//! checked by `scripts/ensure-services.sh`): PostgreSQL (127.0.0.1:5432, database `test`),
//! Redis (127.0.0.1:6379), NATS JetStream (127.0.0.1:4222) and RabbitMQ (127.0.0.1:5672).
//! Each test uses its own table, stream, subject or queue, named after the test, and removes
//! it at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "consumers/postgres.rs"]
mod postgres;

#[path = "consumers/amqp.rs"]
mod amqp;

#[path = "consumers/streams.rs"]
mod streams;

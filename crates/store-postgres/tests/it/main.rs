//! Integration tests of `PostgresStore` against a real PostgreSQL server.
//!
//! The server comes from `HERD_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/postgres`). Without it every test prints why it is skipped
//! and passes, so `cargo test` works on machines without PostgreSQL; CI always sets it.
//! Each test runs in a fresh schema of its own (see `db`).

mod audit;
mod conformance;
mod db;
mod devices;
mod filters;
mod groups;
mod profiles;
mod tokens;

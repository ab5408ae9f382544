//! The shared `Store` conformance suite from `store::conformance`, run against PostgreSQL: one
//! test per case, each in a fresh schema that is dropped afterwards.

store::conformance_tests!(crate::db::conformance_store());

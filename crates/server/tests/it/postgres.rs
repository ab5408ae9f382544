//! `herd serve` on PostgreSQL end to end: the same CLI flow as on SQLite, against a fresh database.
//! Runs when `HERD_TEST_POSTGRES_URL` is set (CI sets it) and prints a skip line otherwise.

use sqlx::Connection as _;
use test_support::TestServer;

use crate::{herd, stderr, stdout};

/// A database created for one test and dropped afterwards.
struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    #[expect(clippy::print_stderr, reason = "a skipped test says why, where cargo test shows it")]
    async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("HERD_TEST_POSTGRES_URL") else {
            eprintln!(
                "skipping: HERD_TEST_POSTGRES_URL is not set (the PostgreSQL end-to-end test needs a server)"
            );
            return None;
        };
        let name = format!(
            "herd_e2e_{}",
            http_api::auth::generate_token_id().as_str().trim_start_matches("tok_")
        );
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to HERD_TEST_POSTGRES_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let slash = base.rfind('/').expect("URL with a database path");
        let url = if base[..slash].ends_with('/') {
            format!("{base}/{name}")
        } else {
            format!("{}/{name}", &base[..slash])
        };
        Some(Self { admin_url, name, url })
    }

    async fn drop_now(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop database");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_on_postgres() {
    let Some(db) = FreshDatabase::create().await else { return };
    let url = db.url.clone();
    let server = TestServer::start_with(|c| {
        c.store = server::config::StoreConfig::Postgres { url, max_connections: 4 };
    })
    .await;
    let env = [("HERD_URL", server.base_url.as_str()), ("HERD_TOKEN", server.admin_token.as_str())];
    let run = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| herd(args, &env));
        assert!(out.status.success(), "herd {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    run(&["device", "create", "pg-1", "--tag", "site=oslo"]);
    run(&["device", "update", "pg-1", "--state", "active"]);
    let list = run(&["device", "list", "--filter", "tags.site = 'oslo' and state = 'active'"]);
    assert!(list.contains("pg-1"), "{list}");
    let verified = run(&["audit", "verify"]);
    assert!(verified.contains("3 record(s) verified"), "{verified}");
    server.stop().await;
    db.drop_now().await;
}

/// The configuration profiles acceptance scenario (`mqtt::profiles`) on PostgreSQL: the recompute
/// queue drained with `FOR UPDATE SKIP LOCKED`, the changed twin pushed to a Mosquitto device.
#[tokio::test(flavor = "multi_thread")]
async fn profiles_on_postgres() {
    if !crate::mqtt::mosquitto_clients() {
        return;
    }
    let Some(db) = FreshDatabase::create().await else { return };
    let url = db.url.clone();
    let server = TestServer::start_with(|c| {
        c.store = server::config::StoreConfig::Postgres { url, max_connections: 4 };
    })
    .await;
    crate::mqtt::profiles::acceptance(&server).await;
    server.stop().await;
    db.drop_now().await;
}

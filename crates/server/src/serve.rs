//! `herd serve`: opening the store, bootstrapping access, serving HTTP and MQTT, and shutting down in
//! order.
//!
//! # Shutdown order
//! When the shutdown future resolves (SIGINT/SIGTERM in the binary, a token in tests):
//! 1. the HTTP and MQTT (TCP and TLS) listeners stop accepting connections, and TLS handshakes in
//!    progress end;
//! 2. the broker tells every MQTT client (TCP, TLS and WebSocket alike) DISCONNECT 0x8B (Server shutting down; v3.1.1 clients see
//!    the socket close), the connection tasks end and the broker task stops; the session writer
//!    commits the broker's last changes and stops; then the presence
//!    recorder writes the disconnects already reported (`server_shutdown`) and the agent report
//!    recorder the facts and heartbeats already received, and both stop;
//! 3. HTTP requests in flight run to completion (their writes commit and are acknowledged);
//! 4. the store is closed (SQLite checkpoints its WAL, PostgreSQL connections close);
//! 5. `run` returns.
//!
//! At startup the device CA is loaded (created in `<data dir>/ca/` on first start, see
//! `identity::ca`) before the store is opened. Then, before any device can connect, every device still recorded as connected (the last run
//! ended without recording it) is marked disconnected with reason `server_restart`, and the broker
//! gets back the persistent MQTT sessions (subscriptions, queued QoS 1 and 2 messages) and retained
//! messages from the store (`mqtt_persist`); they survive a graceful stop and a crash alike, since
//! whatever the broker acknowledged was committed first.
//!
//! Steps 1–3 share one deadline, `server.shutdown_timeout_secs`; past it, remaining MQTT connections
//! are dropped and remaining requests are aborted (their transactions roll back, nothing half-written
//! is visible), and the store is still closed.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use domain::{Actor, Mutation, NewToken, Role, Timestamp, TokenHash};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use mqtt_broker::{Broker, SessionStore as _};
use store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CaSource, Config, IdentityConfig, StoreConfig, redact_url};
use crate::identity::ca::{CaOptions, CertificateAuthority};
use crate::identity::issuer::CaIssuer;
use crate::identity::provision_mqtt;
use crate::identity::rotation::{self, RotationFeeds};
use crate::{gateway, websocket};

/// Binds the HTTP listener, naming the address and the setting to change when it fails.
///
/// # Errors
/// When the address is in use, not local, or not permitted.
pub async fn bind_http(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the address is already in use by another process".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "the address is not one of this machine's".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!(
            "cannot listen for HTTP on {addr}: {why}; choose another address with --http-listen, \
             HERD_HTTP__LISTEN or http.listen in the config file"
        )
    })
}

/// Opens the configured store, running its migrations.
///
/// # Errors
/// When the database cannot be opened, reached or migrated.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.store {
        StoreConfig::Sqlite { path, synchronous, readers } => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dir(parent)?;
            }
            let mut options = store_sqlite::SqliteOptions::new(path.clone());
            options.synchronous = *synchronous;
            options.max_readers = *readers;
            let store = store_sqlite::SqliteStore::open(options)
                .await
                .with_context(|| format!("failed to open SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        StoreConfig::Postgres { url, max_connections } => {
            let mut options = store_postgres::PostgresOptions::new(url.clone());
            options.max_connections = *max_connections;
            let store =
                store_postgres::PostgresStore::connect(options).await.with_context(|| {
                    format!("failed to connect to PostgreSQL at {}", redact_url(url))
                })?;
            Ok(Arc::new(store))
        }
    }
}

/// Loads the device CA: the external one configured, or Herd's own in `<data dir>/ca/`, created on
/// first start.
///
/// # Errors
/// When the CA files cannot be read, written or used (the message names the file).
pub async fn load_certificate_authority(
    identity: &IdentityConfig,
) -> anyhow::Result<Arc<CertificateAuthority>> {
    let source = identity.ca.clone();
    // File I/O and, on first start, key generation: off the async workers.
    let ca = tokio::task::spawn_blocking(move || match &source {
        CaSource::Internal { dir } => {
            CertificateAuthority::load_or_create(dir, &CaOptions::default())
        }
        CaSource::External { cert_file, key_file } => {
            CertificateAuthority::from_files(cert_file, key_file)
        }
    })
    .await
    .context("the task loading the device CA failed")?
    .context("failed to load the device CA")?;
    Ok(Arc::new(ca))
}

/// Creates a directory (and parents) readable only by its owner.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("failed to create data directory {}", dir.display()))
}

/// What bootstrap did on a fresh store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store already had tokens; nothing was done.
    NotNeeded,
    /// The admin token came from `HERD_ADMIN_TOKEN`.
    FromEnvironment,
    /// A token was generated and written to this file.
    Generated(std::path::PathBuf),
}

/// Creates the first admin token when the store has none.
///
/// With a configured secret (`HERD_ADMIN_TOKEN`) that secret becomes the token; otherwise a random
/// one is generated, logged once, and written to `<data-dir>/admin-token` with mode 0600.
///
/// # Errors
/// When the store or the token file cannot be written.
pub async fn bootstrap_admin(store: &dyn Store, config: &Config) -> anyhow::Result<Bootstrap> {
    if store.token_count().await.context("failed to count API tokens")? > 0 {
        return Ok(Bootstrap::NotNeeded);
    }
    let (secret, generated) = match &config.bootstrap_admin_token {
        Some(s) => (s.clone(), false),
        None => (http_api::auth::generate_token_secret(), true),
    };
    let new = NewToken {
        id: http_api::auth::generate_token_id(),
        name: "bootstrap-admin".to_owned(),
        role: Role::Admin,
        hash: TokenHash::of_secret(&secret),
        expires_at: None,
    };
    let m = Mutation { actor: Actor::system(), at: Timestamp::now() };
    store.create_token(&new, &m).await.context("failed to store the bootstrap admin token")?;
    if !generated {
        tracing::info!(token_id = %new.id, "created the first admin token from HERD_ADMIN_TOKEN");
        return Ok(Bootstrap::FromEnvironment);
    }
    create_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("admin-token");
    write_private_file(&path, &format!("{secret}\n"))?;
    tracing::warn!(
        token_id = %new.id,
        token = %secret,
        file = %path.display(),
        "generated the first admin token; it is shown only this once and kept in the file (mode 0600)"
    );
    Ok(Bootstrap::Generated(path))
}

fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f =
        options.open(path).with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.sync_all().with_context(|| format!("failed to sync {}", path.display()))?;
    Ok(())
}

/// The process-wide Prometheus recorder. The `metrics` facade is global by design; installing it
/// once and sharing the handle lets several servers run in one test process.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Request durations as real histograms (buckets in seconds), not summaries.
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; ours then records nothing,
            // which the /metrics output would show.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Runs the server on bound listeners (HTTP with MQTT over WebSocket at `/mqtt`, and the MQTT TCP
/// and TLS listeners `mqtt` holds) until `shutdown` resolves, then shuts down in the order of the
/// module documentation.
///
/// # Errors
/// When the store cannot be opened or bootstrapped, or the HTTP server fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mqtt: gateway::MqttListeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Device certificates will be signed with it (enrollment); loaded first, so that a broken CA
    // stops the server before anything else happens.
    let ca = load_certificate_authority(&config.identity).await?;
    tracing::info!(
        ca_cert = %ca.cert_path().display(),
        external = matches!(config.identity.ca, CaSource::External { .. }),
        "device CA ready"
    );
    let master_key_file = config.identity.master_key_file.clone();
    // File I/O and, on first start, key generation: off the async workers.
    let secret_box = tokio::task::spawn_blocking(move || {
        crate::identity::secrets::load_or_create_master_key(&master_key_file)
    })
    .await
    .context("the task loading the master key failed")?
    .context("failed to load the master key for enrollment secrets")?;
    let store = open_store(&config).await?;
    tracing::info!(backend = store.backend_name(), "store open");
    bootstrap_admin(store.as_ref(), &config).await?;
    let stale =
        store.reset_presence(Timestamp::now()).await.context("failed to reset device presence")?;
    if stale > 0 {
        tracing::info!(devices = stale, "marked devices still recorded as connected disconnected");
    }

    // The broker runs whether or not devices can reach it over TCP: Herd's features use it in-process.
    // Persistent sessions and retained messages come back from the store before anyone can connect;
    // the session writer commits the broker's changes from then on (see `mqtt_persist`).
    let sessions = Arc::new(crate::mqtt_persist::StoreSessions::new(Arc::clone(&store)));
    let snapshot =
        sessions.load().await.context("failed to load MQTT sessions and retained messages")?;
    let broker_stop = CancellationToken::new();
    let (broker, broker_handle, session_writer) =
        Broker::with_store(config.mqtt.broker.clone(), broker_stop.clone(), sessions, snapshot);
    let tasks = TaskTracker::new();
    tasks.spawn(broker.run());
    tasks.spawn(session_writer.run());
    let (access_tx, access_rx) = mpsc::channel(gateway::ACCESS_EVENTS_CAPACITY);
    let (notices_tx, notices_rx) = mpsc::channel(gateway::DEVICE_NOTICES_CAPACITY);
    tasks.spawn(gateway::forward_device_notices(
        notices_rx,
        broker_handle.clone(),
        broker_stop.clone(),
    ));
    // The authenticator owns the access-change receiver: its credential cache drops a device's
    // entries in the same step as the enforcer takes the event (see `gateway::credential_cache`).
    let authenticator =
        Arc::new(gateway::GatewayAuthenticator::new(Arc::clone(&store), &config.mqtt, access_rx));
    tasks.spawn(gateway::enforce_access_changes(
        Arc::clone(&authenticator),
        broker_handle.clone(),
        broker_stop.clone(),
    ));

    // Desired-state changes committed by REST requests, pushed to devices by the twin task.
    let (twin_tx, twin_rx) = mpsc::channel(crate::twin::TWIN_CHANGES_CAPACITY);
    let twin_job_tx = twin_tx.clone();
    let twin_recompute_tx = twin_tx.clone();
    // Wakes the profile recompute task after REST changes that queued devices.
    let recompute_wake = Arc::new(Notify::new());
    let issuer = Arc::new(CaIssuer::new(Arc::clone(&ca), config.identity.certificate_lifetime));
    let commands = Arc::new(crate::commands::MqttCommands::new(
        Arc::clone(&store),
        broker_handle.clone(),
        &config.commands,
    ));
    let state = http_api::AppState::new(Arc::clone(&store), config.api.clone())
        .with_command_dispatcher(Arc::clone(&commands) as Arc<dyn http_api::CommandDispatcher>)
        .with_metrics(metrics_handle())
        .with_access_events(access_tx)
        .with_device_notices(notices_tx)
        .with_certificate_issuer(Arc::clone(&issuer) as Arc<dyn http_api::CertificateIssuer>)
        .with_secret_box(Arc::new(secret_box))
        .with_twin_policy(config.twin.policy)
        .with_twin_changes(twin_tx)
        .with_recompute_wake(Arc::clone(&recompute_wake));
    let local = listener.local_addr().context("listener has no local address")?;

    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    let presence_stop = CancellationToken::new();
    let presence = TaskTracker::new();
    // Devices can always connect over WebSocket on the HTTP listener, so presence is always recorded.
    let events = broker_handle.connection_events(
        NonZeroUsize::new(gateway::PRESENCE_EVENTS_CAPACITY)
            .expect("the capacity constant is not zero"),
    );
    // Devices whose connection is recorded, announced to the features that catch them up.
    let arrivals = gateway::DeviceArrivals::new();
    // Listening before the recorder runs, so that no arrival is missed.
    let command_arrivals = arrivals.listen();
    let twin_arrivals = arrivals.listen();
    let job_arrivals = arrivals.listen();
    presence.spawn(gateway::record_presence(
        events,
        Arc::clone(&store),
        Arc::clone(&authenticator),
        broker_handle.clone(),
        arrivals.clone(),
        presence_stop.clone(),
    ));
    // Agents' facts and heartbeats, subscribed to before any device can connect; recorded by a task
    // of its own that stops like the presence recorder.
    let agent_feeds = gateway::AgentReportFeeds::subscribe(&broker_handle)
        .await
        .context("failed to subscribe to agent reports")?;
    presence.spawn(gateway::record_agent_reports(
        agent_feeds,
        Arc::clone(&store),
        config.mqtt.agent_report_max_bytes,
        presence_stop.clone(),
    ));
    // Devices renewing their own certificates and credentials; subscribed before any device can
    // connect, stopped like the recorders.
    let rotation_feeds = RotationFeeds::subscribe(&broker_handle)
        .await
        .context("failed to subscribe to identity requests")?;
    presence.spawn(rotation::serve_rotation(
        rotation_feeds,
        rotation::Responder {
            store: Arc::clone(&store),
            broker: broker_handle.clone(),
            issuer,
            max_per_device: config.identity.max_credentials_per_device,
        },
        presence_stop.clone(),
    ));
    // Direct commands: answers and pending requests subscribed before any device can connect;
    // arrivals, the sweep and retention on the same task, stopped like the recorders.
    let command_feeds = crate::commands::CommandFeeds::subscribe(&broker_handle)
        .await
        .context("failed to subscribe to command answers")?;
    presence.spawn(crate::commands::serve_commands(
        command_feeds,
        command_arrivals,
        commands,
        config.commands.sweep_interval,
        config.commands.retention,
        presence_stop.clone(),
    ));
    // Device twins: requests, desired-state pushes and arrival catch-up; subscribed before any
    // device can connect, stopped like the recorders.
    let twin_feeds = crate::twin::TwinFeeds::subscribe(&broker_handle)
        .await
        .context("failed to subscribe to twin requests")?;
    presence.spawn(crate::twin::serve_twins(
        twin_feeds,
        twin_rx,
        twin_arrivals,
        crate::twin::TwinService {
            store: Arc::clone(&store),
            broker: broker_handle.clone(),
            policy: config.twin.policy,
            max_request_bytes: config.twin.max_request_bytes,
        },
        presence_stop.clone(),
    ));
    // Configuration profiles: the recompute queue drained into twins, the changed ones pushed by
    // the twin task; stopped like the recorders.
    presence.spawn(crate::profiles::run_recompute(
        crate::profiles::Recompute {
            store: Arc::clone(&store),
            policy: config.twin.policy,
            batch: config.twin.recompute_batch,
            interval: config.twin.recompute_interval,
            changes: twin_recompute_tx,
        },
        recompute_wake,
        presence_stop.clone(),
    ));
    // Fleet jobs: devices' job requests (subscribed before any device can connect) and the
    // scheduler that starts and delivers executions; both stop like the recorders.
    let jobs = crate::jobs::Jobs {
        store: Arc::clone(&store),
        broker: broker_handle.clone(),
        // Desired-patch jobs change the device layer of each device's twin.
        patcher: Arc::new(crate::jobs::TwinPatcher {
            store: Arc::clone(&store),
            policy: config.twin.policy,
            changes: twin_job_tx,
        }),
        config: config.jobs.clone(),
    };
    let job_feeds = crate::jobs::JobFeeds::subscribe(&broker_handle)
        .await
        .context("failed to subscribe to job requests")?;
    presence.spawn(crate::jobs::serve_devices(
        job_feeds,
        job_arrivals,
        jobs.clone(),
        presence_stop.clone(),
    ));
    presence.spawn(crate::jobs::run_scheduler(jobs, presence_stop.clone()));
    // Devices provisioning themselves over MQTT (the `$provision` login); subscribed before any
    // client can connect, stopped like the recorders.
    if config.mqtt.provisioning.is_some() {
        let feed = provision_mqtt::ProvisioningFeed::subscribe(&broker_handle)
            .await
            .context("failed to subscribe to MQTT registrations")?;
        presence.spawn(provision_mqtt::serve_provisioning(
            feed,
            provision_mqtt::Responder {
                provisioner: state.provisioner(),
                broker: broker_handle.clone(),
                authenticator: Arc::clone(&authenticator),
            },
            presence_stop.clone(),
        ));
    }
    // One budget of connections for TCP, TLS and WebSocket together.
    let permits = Arc::new(Semaphore::new(config.mqtt.max_connections));
    let mqtt_local = match mqtt.tcp {
        Some(tcp) => {
            let addr = tcp.local_addr().context("MQTT listener has no local address")?;
            tasks.spawn(gateway::accept_loop(
                tcp,
                gateway::Transport::Tcp,
                broker_handle.clone(),
                Arc::clone(&authenticator),
                Arc::clone(&permits),
                connections.clone(),
                stop_accepting.clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    let mqtts_local = match mqtt.tls {
        Some(tls) => {
            let addr =
                tls.listener.local_addr().context("MQTT TLS listener has no local address")?;
            // Devices may log in with a certificate of the device CA instead of a credential, and
            // onboard with one of an X.509 enrollment group's CA.
            let trust =
                gateway::client_cert::ClientTrust::new(ca.ca_pem(), gateway::tls_provider())?;
            tasks.spawn(gateway::client_cert::refresh_client_trust(
                Arc::clone(&trust),
                Arc::clone(&store),
                config.identity.trust_refresh,
                broker_stop.clone(),
            ));
            let acceptor = tls.acceptor(trust)?;
            tasks.spawn(gateway::accept_loop(
                tls.listener,
                gateway::Transport::Tls {
                    acceptor,
                    handshake_timeout: config.mqtt.broker.connect_timeout,
                },
                broker_handle.clone(),
                Arc::clone(&authenticator),
                Arc::clone(&permits),
                connections.clone(),
                stop_accepting.clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    let app = http_api::router_with(
        state,
        websocket::router(websocket::WebSocketGateway {
            broker: broker_handle.clone(),
            authenticator,
            permits,
            connections: connections.clone(),
            max_message_bytes: config.mqtt.broker.max_packet_size.get() as usize,
        }),
    );
    tracing::info!(
        http = %local,
        mqtt = mqtt_local.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        mqtts = mqtts_local.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        mqtt_websocket = websocket::PATH,
        data_dir = %config.data_dir.display(),
        "herd is serving"
    );

    let server = {
        let stop = stop_accepting.clone();
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    shutdown.await;
    tracing::info!("shutting down: no new connections; disconnecting devices; finishing requests");
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    // 1. Both listeners stop accepting.
    stop_accepting.cancel();
    // 2. Every MQTT connection sends DISCONNECT 0x8B (v5) and closes; the broker task stops.
    broker_stop.cancel();
    connections.close();
    tasks.close();
    if tokio::time::timeout_at(deadline, async {
        connections.wait().await;
        tasks.wait().await;
    })
    .await
    .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown deadline passed; dropping MQTT connections");
    }
    // ... and the presence and agent report recorders write what they received, then stop.
    presence_stop.cancel();
    presence.close();
    if tokio::time::timeout_at(deadline, presence.wait()).await.is_err() {
        tracing::warn!(
            "shutdown deadline passed; device presence may be left connected and the last agent \
             reports unrecorded"
        );
    }
    // 3. HTTP requests in flight finish.
    let abort = server.abort_handle();
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown deadline passed; aborting requests in flight");
            abort.abort();
        }
    }
    // 4. The store closes.
    store.close().await;
    tracing::info!("store closed; goodbye");
    Ok(())
}

/// Installs the tracing subscriber (logs go to stderr). `RUST_LOG`, when set, wins over the
/// configured level.
pub fn init_tracing(log: &crate::config::LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        crate::config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

/// A future that resolves on the first SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled: from then
/// on a signal is never the default "terminate the process" but a graceful shutdown, even when it
/// arrives while the server is still starting (a loaded machine may not poll the future until well
/// after "herd is serving" is logged). Call it inside the runtime, before starting anything.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                None
            }
        };
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => tracing::info!("received SIGINT"),
                () = wait(terminate) => tracing::info!("received SIGTERM"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("received Ctrl-C");
    }
}

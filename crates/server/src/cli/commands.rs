//! The operator commands: each builds a request, sends it, and prints the result.

use anyhow::{Context as _, bail};
use domain::AuditRecord;
use domain::audit::ChainVerifier;
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::client::{Client, encode};
use crate::cli::output::{self, Table};
use crate::cli::{
    AuditCommand, CertificateCommand, ClientArgs, CredentialCommand, DeviceCommand, GroupCommand,
    ImportFormat, OutputFormat, TokenCommand,
};

/// Runs `herd device …`.
pub(crate) async fn device(cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Create { id, name, tags, attributes, state, client } => {
            let mut body = Map::new();
            body.insert("id".into(), id.into());
            insert_device_fields(&mut body, name, &tags, attributes, state)?;
            let c = Client::new(&client)?;
            let d = c.post("/api/v1/devices", &Value::Object(body)).await?;
            print_devices(&client, &d, std::slice::from_ref(&d))
        }
        DeviceCommand::Get { id, client } => {
            let c = Client::new(&client)?;
            let d = c.get(&format!("/api/v1/devices/{}", encode(&id))).await?;
            print_device_detail(&client, &d)
        }
        DeviceCommand::List { filter, state, tags, prefix, limit, cursor, all, client } => {
            let mut query = Vec::new();
            if let Some(f) = filter {
                query.push(format!("filter={}", encode(&f)));
            }
            if let Some(s) = state {
                query.push(format!("state={}", encode(&s)));
            }
            for t in &tags {
                query.push(format!("tag={}", encode(t)));
            }
            if let Some(p) = prefix {
                query.push(format!("id_prefix={}", encode(&p)));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let c = Client::new(&client)?;
            list_pages(&c, &client, "/api/v1/devices", query, cursor, all).await
        }
        DeviceCommand::Update {
            id,
            name,
            tags,
            clear_tags,
            attributes,
            state,
            if_version,
            dry_run,
            client,
        } => {
            let mut body = Map::new();
            let tags = if clear_tags { &[][..] } else { &tags[..] };
            insert_device_fields(&mut body, name, tags, attributes, state)?;
            if clear_tags {
                body.insert("tags".into(), json!({}));
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give --name, --tag, --clear-tags, --attributes or --state"
                );
            }
            let c = Client::new(&client)?;
            let mut path = format!("/api/v1/devices/{}", encode(&id));
            if dry_run {
                path.push_str("?dry_run=true");
            }
            let req = c.request(Method::PATCH, &path)?;
            let req = if_version_matches(req.json(&body), if_version);
            let d = c.send(req).await?;
            if dry_run {
                return print_device_dry_run(&client, &d);
            }
            print_devices(&client, &d, std::slice::from_ref(&d))
        }
        DeviceCommand::Delete { id, if_version, client } => {
            let c = Client::new(&client)?;
            let req = c.request(Method::DELETE, &format!("/api/v1/devices/{}", encode(&id)))?;
            let req = if_version_matches(req, if_version);
            c.send(req).await?;
            done(&client, &format!("deleted device {id}"))
        }
        DeviceCommand::Replace { id, with, client } => {
            let c = Client::new(&client)?;
            let path = format!("/api/v1/devices/{}/replace", encode(&id));
            let r = c.post(&path, &json!({ "with": with })).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&r);
            }
            let count = |section: &str, key: &str| {
                r.get(section).and_then(|s| s.get(key)).and_then(Value::as_u64).unwrap_or(0)
            };
            let created = r.get("created").and_then(Value::as_bool).unwrap_or(false);
            output::write_raw(&format!(
                "replaced device {id} with {}{with}: moved {} tags, {} attributes, {} groups; \
                 revoked {} credentials, {} certificates; {id} is retired",
                if created { "new device " } else { "" },
                count("moved", "tags"),
                count("moved", "attributes"),
                count("moved", "groups"),
                count("revoked", "credentials"),
                count("revoked", "certificates"),
            ))
        }
        DeviceCommand::Import { file, format, atomic, client } => {
            import(&file, format, atomic, &client).await
        }
        DeviceCommand::Credential(cmd) => credential(cmd).await,
        DeviceCommand::Certificate(cmd) => certificate(cmd).await,
    }
}

/// Runs `herd device certificate …`.
async fn certificate(cmd: CertificateCommand) -> anyhow::Result<()> {
    let path = |device: &str| format!("/api/v1/devices/{}/certificates", encode(device));
    match cmd {
        CertificateCommand::Issue { device, csr, ca_out, client } => {
            let csr_pem = if csr.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("cannot read the CSR from stdin")?
            } else {
                std::fs::read_to_string(&csr)
                    .with_context(|| format!("cannot read {}", csr.display()))?
            };
            let c = Client::new(&client)?.post(&path(&device), &json!({ "csr": csr_pem })).await?;
            if let Some(ca_out) = &ca_out {
                std::fs::write(ca_out, str_field(&c, "ca_certificate"))
                    .with_context(|| format!("cannot write {}", ca_out.display()))?;
            }
            if client.output == OutputFormat::Json {
                return output::write_json(&c);
            }
            output::note(&format!(
                "issued certificate {} for device {} (valid until {}, SHA-256 fingerprint {})",
                str_field(&c, "serial"),
                str_field(&c, "device_id"),
                str_field(&c, "not_after"),
                str_field(&c, "fingerprint_sha256"),
            ));
            output::write_raw(&str_field(&c, "certificate"))
        }
        CertificateCommand::List { device, client } => {
            let list = Client::new(&client)?.get(&path(&device)).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&list);
            }
            let mut t = Table::new(&["SERIAL", "CREATED", "NOT AFTER", "REVOKED"]);
            for i in page_items(&list) {
                t.row(vec![
                    str_field(&i, "serial"),
                    str_field(&i, "created_at"),
                    str_field(&i, "not_after"),
                    str_field(&i, "revoked_at"),
                ]);
            }
            output::write_raw(&t.render())
        }
        CertificateCommand::Revoke { device, serial, client } => {
            let c = Client::new(&client)?
                .delete(&format!("{}/{}", path(&device), encode(&serial)))
                .await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&c);
            }
            done(&client, &format!("revoked certificate {serial} of device {device}"))
        }
        CertificateCommand::Expiring { within_days, limit, client } => {
            let list = Client::new(&client)?
                .get(&format!(
                    "/api/v1/certificates/expiring?within_days={within_days}&limit={limit}"
                ))
                .await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&list);
            }
            let mut t = Table::new(&["DEVICE", "SERIAL", "NOT AFTER"]);
            for i in page_items(&list) {
                t.row(vec![
                    str_field(&i, "device_id"),
                    str_field(&i, "serial"),
                    str_field(&i, "not_after"),
                ]);
            }
            output::write_raw(&t.render())
        }
    }
}

/// Runs `herd device credential …`.
async fn credential(cmd: CredentialCommand) -> anyhow::Result<()> {
    let path = |device: &str| format!("/api/v1/devices/{}/credentials", encode(device));
    match cmd {
        CredentialCommand::Create { device, expires_in_days, client } => {
            let mut body = json!({});
            if let Some(d) = expires_in_days {
                body["expires_in_days"] = d.into();
            }
            let c = Client::new(&client)?.post(&path(&device), &body).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&c);
            }
            let expires = match str_field(&c, "expires_at") {
                e if e.is_empty() => "never expires".to_owned(),
                e => format!("expires {e}"),
            };
            output::write_raw(&format!(
                "created credential {} for device {} ({expires}).\nThe secret is shown only once; store it now:\n{}",
                str_field(&c, "id"),
                str_field(&c, "device_id"),
                str_field(&c, "token")
            ))
        }
        CredentialCommand::List { device, client } => {
            let list = Client::new(&client)?.get(&path(&device)).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&list);
            }
            let mut t = Table::new(&["ID", "CREATED", "EXPIRES", "REVOKED"]);
            for i in page_items(&list) {
                t.row(vec![
                    str_field(&i, "id"),
                    str_field(&i, "created_at"),
                    str_field(&i, "expires_at"),
                    str_field(&i, "revoked_at"),
                ]);
            }
            output::write_raw(&t.render())
        }
        CredentialCommand::Revoke { device, id, client } => {
            let c =
                Client::new(&client)?.delete(&format!("{}/{}", path(&device), encode(&id))).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&c);
            }
            done(&client, &format!("revoked credential {id} of device {device}"))
        }
        CredentialCommand::Rotate { device, kind, client } => {
            let sent = Client::new(&client)?
                .post(
                    &format!("/api/v1/devices/{}/rotate-credentials", encode(&device)),
                    &json!({ "credential": kind.as_str() }),
                )
                .await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&sent);
            }
            done(&client, &format!("asked device {device} to renew its {}", kind.as_str()))
        }
    }
}

async fn import(
    file: &std::path::Path,
    format: Option<ImportFormat>,
    atomic: bool,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let format = match format {
        Some(f) => f,
        None => {
            match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref()
            {
                Some("csv") => ImportFormat::Csv,
                Some("jsonl" | "ndjson") => ImportFormat::Jsonl,
                _ => bail!(
                    "cannot tell the format of {} from its extension; pass --format csv or --format jsonl",
                    file.display()
                ),
            }
        }
    };
    let (content_type, name) = match format {
        ImportFormat::Csv => ("text/csv", "csv"),
        ImportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            progress.inc(bytes.len() as u64);
        }
        chunk
    });
    let c = Client::new(client)?;
    let path = format!("/api/v1/devices:import?format={name}&atomic={atomic}&report=rejected");
    let req = c
        .request(Method::POST, &path)?
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(reqwest::Body::wrap_stream(stream));
    let result = c.send(req).await;
    bar.finish_and_clear();
    let report = result?;
    if client.output == OutputFormat::Json {
        return output::write_json(&report);
    }
    let n = |k: &str| report.get(k).and_then(Value::as_u64).unwrap_or(0);
    let committed = report.get("committed").and_then(Value::as_bool).unwrap_or(false);
    let mut text = format!(
        "created {}, updated {}, unchanged {}, rejected {}{}\n",
        n("created"),
        n("updated"),
        n("unchanged"),
        n("rejected"),
        if committed {
            ""
        } else {
            " — nothing was committed (atomic import with rejected lines)"
        }
    );
    if let Some(lines) = report.get("lines").and_then(Value::as_array).filter(|l| !l.is_empty()) {
        let mut t = Table::new(&["LINE", "ID", "REASON"]);
        for l in lines {
            t.row(vec![
                l.get("line").map(Value::to_string).unwrap_or_default(),
                str_field(l, "id"),
                str_field(l, "reason"),
            ]);
        }
        text.push_str(&t.render());
    }
    output::write_raw(&text)?;
    if n("rejected") > 0 {
        bail!("{} line(s) rejected", n("rejected"));
    }
    Ok(())
}

/// Runs `herd group …`.
pub(crate) async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::Create { name, description, filter, client } => {
            let body = with_group_fields(json!({ "name": name }), description, filter);
            let g = Client::new(&client)?.post("/api/v1/groups", &body).await?;
            print_groups(&client, &g, std::slice::from_ref(&g))
        }
        GroupCommand::Get { name, client } => {
            let g = Client::new(&client)?.get(&format!("/api/v1/groups/{}", encode(&name))).await?;
            print_groups(&client, &g, std::slice::from_ref(&g))
        }
        GroupCommand::List { client } => {
            let c = Client::new(&client)?;
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(cur) => format!("/api/v1/groups?limit=1000&cursor={}", encode(cur)),
                    None => "/api/v1/groups?limit=1000".to_owned(),
                };
                let page = c.get(&path).await?;
                items.extend(page_items(&page));
                match page.get("next_cursor").and_then(Value::as_str) {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            print_groups(&client, &json!({ "items": items }), &items)
        }
        GroupCommand::Update { name, description, filter, client } => {
            let body = with_group_fields(json!({}), description, filter);
            let c = Client::new(&client)?;
            let g = c
                .send(
                    c.request(Method::PATCH, &format!("/api/v1/groups/{}", encode(&name)))?
                        .json(&body),
                )
                .await?;
            print_groups(&client, &g, std::slice::from_ref(&g))
        }
        GroupCommand::Delete { name, client } => {
            Client::new(&client)?.delete(&format!("/api/v1/groups/{}", encode(&name))).await?;
            done(&client, &format!("deleted group {name}"))
        }
        GroupCommand::Add { name, devices, client } => {
            let c = Client::new(&client)?;
            let n = devices.len();
            c.post(
                &format!("/api/v1/groups/{}/members", encode(&name)),
                &json!({ "device_ids": devices }),
            )
            .await?;
            done(&client, &format!("added {n} device(s) to group {name}"))
        }
        GroupCommand::Remove { name, devices, client } => {
            let c = Client::new(&client)?;
            for d in &devices {
                c.delete(&format!("/api/v1/groups/{}/members/{}", encode(&name), encode(d)))
                    .await?;
            }
            done(&client, &format!("removed {} device(s) from group {name}", devices.len()))
        }
        GroupCommand::Devices { name, all, client } => {
            let c = Client::new(&client)?;
            list_pages(
                &c,
                &client,
                &format!("/api/v1/groups/{}/devices", encode(&name)),
                Vec::new(),
                None,
                all,
            )
            .await
        }
        GroupCommand::RotateCredentials { name, kind, client } => {
            let sent = Client::new(&client)?
                .post(
                    &format!("/api/v1/groups/{}/rotate-credentials", encode(&name)),
                    &json!({ "credential": kind.as_str() }),
                )
                .await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&sent);
            }
            done(
                &client,
                &format!(
                    "asked {} active device(s) of group {name} to renew their {}",
                    sent["devices"],
                    kind.as_str()
                ),
            )
        }
    }
}

/// Runs `herd token …`.
pub(crate) async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { name, role, expires_in_days, client } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(d) = expires_in_days {
                body["expires_in_days"] = d.into();
            }
            let t = Client::new(&client)?.post("/api/v1/tokens", &body).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&t);
            }
            output::write_raw(&format!(
                "created token {} ({}, role {}).\nThe secret is shown only once; store it now:\n{}",
                str_field(&t, "id"),
                str_field(&t, "name"),
                str_field(&t, "role"),
                str_field(&t, "token")
            ))
        }
        TokenCommand::List { client } => {
            let list = Client::new(&client)?.get("/api/v1/tokens").await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&list);
            }
            let items = page_items(&list);
            let mut t = Table::new(&["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"]);
            for i in &items {
                t.row(vec![
                    str_field(i, "id"),
                    str_field(i, "name"),
                    str_field(i, "role"),
                    str_field(i, "created_at"),
                    str_field(i, "expires_at"),
                    str_field(i, "revoked_at"),
                ]);
            }
            output::write_raw(&t.render())
        }
        TokenCommand::Revoke { id, client } => {
            let t =
                Client::new(&client)?.delete(&format!("/api/v1/tokens/{}", encode(&id))).await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&t);
            }
            done(&client, &format!("revoked token {id}"))
        }
        TokenCommand::Whoami { client } => {
            let me = Client::new(&client)?.get("/api/v1/whoami").await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&me);
            }
            output::write_raw(&format!(
                "{} ({}), role {}",
                str_field(&me, "id"),
                str_field(&me, "name"),
                str_field(&me, "role")
            ))
        }
    }
}

/// Runs `herd audit …`.
pub(crate) async fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { after, limit, client } => {
            let page = Client::new(&client)?
                .get(&format!("/api/v1/audit?after={after}&limit={limit}"))
                .await?;
            if client.output == OutputFormat::Json {
                return output::write_json(&page);
            }
            let mut t = Table::new(&["SEQ", "AT", "ACTOR", "ACTION", "RESOURCE"]);
            for r in page_items(&page) {
                t.row(vec![
                    r.get("seq").map(Value::to_string).unwrap_or_default(),
                    str_field(&r, "at"),
                    str_field(&r, "actor"),
                    str_field(&r, "action"),
                    str_field(&r, "resource"),
                ]);
            }
            output::write_raw(&t.render())
        }
        AuditCommand::Verify { client } => {
            let c = Client::new(&client)?;
            let mut verifier = ChainVerifier::new();
            let mut after = 0u64;
            let mut head = String::new();
            loop {
                let page = c.get(&format!("/api/v1/audit?after={after}&limit=1000")).await?;
                let items = page_items(&page);
                for item in &items {
                    let record = record_from_json(item)?;
                    if let Err(broken) = verifier.check(&record) {
                        if client.output == OutputFormat::Json {
                            output::write_json(
                                &json!({"ok": false, "checked": verifier.checked(), "broken_seq": broken.seq, "reason": broken.reason}),
                            )?;
                        }
                        bail!("{broken}");
                    }
                    head = hex::encode(record.hash);
                    after = record.seq;
                }
                if page.get("next_after").and_then(Value::as_u64).is_none() || items.is_empty() {
                    break;
                }
            }
            if client.output == OutputFormat::Json {
                return output::write_json(
                    &json!({"ok": true, "checked": verifier.checked(), "head": head}),
                );
            }
            output::write_raw(&format!(
                "audit chain intact: {} record(s) verified, head {head}",
                verifier.checked()
            ))
        }
    }
}

/// Rebuilds an [`AuditRecord`] from its API form, re-serializing `before`/`after` as the server did.
fn record_from_json(v: &Value) -> anyhow::Result<AuditRecord> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("audit record without {k}"))
    };
    let hash = |k: &str| -> anyhow::Result<[u8; 32]> {
        let bytes = hex::decode(s(k)?).with_context(|| format!("audit {k} is not hex"))?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("audit {k} is not 32 bytes"))
    };
    let json_text = |k: &str| match v.get(k) {
        None | Some(Value::Null) => None,
        Some(x) => Some(x.to_string()),
    };
    let at = domain::Timestamp::parse_rfc3339(&s("at")?).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(AuditRecord {
        seq: v.get("seq").and_then(Value::as_u64).context("audit record without seq")?,
        at,
        actor: s("actor")?,
        action: s("action")?,
        resource: s("resource")?,
        before: json_text("before"),
        after: json_text("after"),
        prev_hash: hash("prev_hash")?,
        hash: hash("hash")?,
    })
}

async fn list_pages(
    c: &Client,
    client: &ClientArgs,
    path: &str,
    query: Vec<String>,
    mut cursor: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let mut items = Vec::new();
    let next = loop {
        let mut q = query.clone();
        if let Some(cur) = &cursor {
            q.push(format!("cursor={}", encode(cur)));
        }
        let url = if q.is_empty() { path.to_owned() } else { format!("{path}?{}", q.join("&")) };
        let page = c.get(&url).await?;
        items.extend(page_items(&page));
        let next = page.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
        match (next, all) {
            (Some(n), true) => cursor = Some(n),
            (next, _) => break next,
        }
    };
    let whole = json!({ "items": items, "next_cursor": next });
    print_devices(client, &whole, &items)?;
    if let (Some(n), OutputFormat::Table) = (next, client.output) {
        output::note(&format!("more devices follow: --cursor {n} (or --all)"));
    }
    Ok(())
}

fn print_devices(client: &ClientArgs, whole: &Value, items: &[Value]) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(whole);
    }
    let mut t = Table::new(&["ID", "NAME", "STATE", "TAGS", "VERSION", "UPDATED"]);
    for d in items {
        t.row(vec![
            str_field(d, "id"),
            str_field(d, "name"),
            str_field(d, "state"),
            tags_text(d.get("tags")),
            d.get("version").map(Value::to_string).unwrap_or_default(),
            str_field(d, "updated_at"),
        ]);
    }
    output::write_raw(&t.render())
}

fn print_device_detail(client: &ClientArgs, d: &Value) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(d);
    }
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for k in ["id", "name", "state", "version", "created_at", "updated_at"] {
        let v = match d.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        t.row(vec![k.to_owned(), v]);
    }
    t.row(vec!["tags".into(), tags_text(d.get("tags"))]);
    t.row(vec!["attributes".into(), d.get("attributes").map(Value::to_string).unwrap_or_default()]);
    for k in ["replaces", "replaced_by"] {
        if let Some(Value::String(other)) = d.get(k) {
            t.row(vec![k.replace('_', " "), other.clone()]);
        }
    }
    if let Some(c) = d.get("connectivity") {
        let connected = c.get("connected").and_then(Value::as_bool).unwrap_or(false);
        let text = if connected {
            format!(
                "connected since {} from {} (MQTT {})",
                str_field(c, "connected_at"),
                str_field(c, "remote_addr"),
                str_field(c, "protocol")
            )
        } else if c.get("disconnected_at").is_some_and(|v| !v.is_null()) {
            format!(
                "disconnected at {} ({})",
                str_field(c, "disconnected_at"),
                str_field(c, "last_disconnect_reason")
            )
        } else {
            "never connected".to_owned()
        };
        t.row(vec!["connectivity".into(), text]);
    }
    if let Some(a) = d.get("agent").filter(|a| a.is_object()) {
        let facts = match a.get("facts") {
            Some(f @ Value::Object(_)) => {
                format!("{f} (reported at {})", str_field(a, "facts_reported_at"))
            }
            _ => "none reported".to_owned(),
        };
        t.row(vec!["agent facts".into(), facts]);
        let heartbeats = a.get("heartbeats").and_then(Value::as_u64).unwrap_or(0);
        let health = match a.get("health") {
            Some(h @ Value::Object(_)) => format!(
                "{h} (last heartbeat at {}, {heartbeats} in all)",
                str_field(a, "last_heartbeat_at")
            ),
            _ => "no heartbeat yet".to_owned(),
        };
        t.row(vec!["agent health".into(), health]);
    }
    output::write_raw(&t.render())
}

/// Runs `herd inventory`: device counts by lifecycle state and connectivity.
pub(crate) async fn inventory(client: ClientArgs) -> anyhow::Result<()> {
    let c = Client::new(&client)?;
    let summary = c.get("/api/v1/inventory/summary").await?;
    let connectivity = c.get("/api/v1/inventory/connectivity").await?;
    if client.output == OutputFormat::Json {
        return output::write_json(&json!({ "summary": summary, "connectivity": connectivity }));
    }
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
    let mut t = Table::new(&["", "DEVICES"]);
    t.row(vec!["total".into(), n(&summary, "total")]);
    if let Some(by_state) = summary.get("by_state").and_then(Value::as_object) {
        for (state, count) in by_state {
            t.row(vec![state.clone(), count.to_string()]);
        }
    }
    t.row(vec!["connected now".into(), n(&connectivity, "connected")]);
    t.row(vec!["ever connected".into(), n(&connectivity, "ever_connected")]);
    output::write_raw(&t.render())
}

fn print_groups(client: &ClientArgs, whole: &Value, items: &[Value]) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(whole);
    }
    let mut t = Table::new(&["NAME", "KIND", "FILTER", "DESCRIPTION"]);
    for g in items {
        t.row(vec![
            str_field(g, "name"),
            str_field(g, "kind"),
            str_field(g, "filter"),
            str_field(g, "description"),
        ]);
    }
    output::write_raw(&t.render())
}

pub(super) fn done(client: &ClientArgs, message: &str) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(&json!({ "ok": true }));
    }
    output::write_raw(message)
}

/// Adds the fields `device create` and `device update` share to a request body, each only when
/// given (no tags: no `tags` field).
fn insert_device_fields(
    body: &mut Map<String, Value>,
    name: Option<String>,
    tags: &[String],
    attributes: Option<String>,
    state: Option<String>,
) -> anyhow::Result<()> {
    if let Some(n) = name {
        body.insert("name".into(), n.into());
    }
    if !tags.is_empty() {
        body.insert("tags".into(), parse_tags(tags)?);
    }
    if let Some(a) = attributes {
        body.insert("attributes".into(), parse_json_object(&a)?);
    }
    if let Some(s) = state {
        body.insert("state".into(), s.into());
    }
    Ok(())
}

/// `body` with the `description` and `filter` of `group create` and `group update`, when given.
fn with_group_fields(
    mut body: Value,
    description: Option<String>,
    filter: Option<String>,
) -> Value {
    if let Some(d) = description {
        body["description"] = d.into();
    }
    if let Some(f) = filter {
        body["filter"] = f.into();
    }
    body
}

/// Makes `req` apply only to that version of the device (`If-Match`), when `--if-version` is given.
fn if_version_matches(
    req: reqwest::RequestBuilder,
    if_version: Option<u64>,
) -> reqwest::RequestBuilder {
    match if_version {
        Some(v) => req.header("If-Match", format!("\"{v}\"")),
        None => req,
    }
}

/// The `items` of a list response (none when it has no `items` array).
pub(super) fn page_items(page: &Value) -> Vec<Value> {
    page.get("items").and_then(Value::as_array).cloned().unwrap_or_default()
}

pub(super) fn str_field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub(super) fn tags_text(tags: Option<&Value>) -> String {
    tags.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub(super) fn parse_tags(tags: &[String]) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for t in tags {
        let Some((k, v)) = t.split_once('=') else {
            bail!("--tag takes KEY=VALUE, got {t:?}");
        };
        map.insert(k.to_owned(), v.into());
    }
    Ok(Value::Object(map))
}

fn parse_json_object(text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).context("--attributes must be a JSON object")?;
    if !v.is_object() {
        bail!("--attributes must be a JSON object, like '{{\"fw\":\"1.2\"}}'");
    }
    Ok(v)
}

/// The blast radius of a device change (`PATCH /api/v1/devices/{id}?dry_run=true`).
fn print_device_dry_run(client: &ClientArgs, r: &Value) -> anyhow::Result<()> {
    if client.output == OutputFormat::Json {
        return output::write_json(r);
    }
    let names = |v: &Value| -> String {
        let list: Vec<&str> =
            v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if list.is_empty() { "-".to_owned() } else { list.join(", ") }
    };
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["groups joined".into(), names(&r["groups"]["joined"])]);
    t.row(vec!["groups left".into(), names(&r["groups"]["left"])]);
    t.row(vec!["profiles gained".into(), names(&r["profiles"]["gained"])]);
    t.row(vec!["profiles lost".into(), names(&r["profiles"]["lost"])]);
    t.row(vec!["desired changes".into(), r["desired"]["changes"].to_string()]);
    output::write_raw(&t.render())?;
    output::write_raw("dry run: nothing was changed")
}

//! `signalcast-accounts`: serve the accounts API (the default), apply migrations, seed
//! dev users, or bootstrap a deployment's first plan, user and producer key.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "signalcast-accounts",
    version,
    about = "signalcast accounts sidecar (PostgreSQL)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://signalcast@127.0.0.1:5432/signalcast
    #[arg(
        long,
        env = "SIGNALCAST_ACCOUNTS_DATABASE_URL",
        global = true,
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// PostgreSQL over TLS: the CA that signed the server's certificate (PEM); the
    /// chain and the URL's host are verified, and the file is re-read when it changes.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_DATABASE_CA_FILE", global = true)]
    database_ca_file: Option<PathBuf>,
    /// Without a command: `serve` with these options.
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// The public API: logins, JWKS, the gateways' change feed, health, metrics.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// The admin API (users, plans, keys), on its own listener: keep it on loopback or
    /// a private network.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_ADMIN_LISTEN", default_value = "127.0.0.1:8082")]
    admin_listen: String,
    /// Bearer token of the admin endpoints (required, at least 16 characters).
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token gateways use for the change feed and producer keys (required, at
    /// least 16 characters).
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", hide_env_values = true)]
    gateway_token: Option<String>,
    /// Access token lifetime, seconds.
    #[arg(long, default_value_t = 900)]
    access_ttl_secs: u64,
    /// Password verifications at once (each takes 19 MiB for tens of milliseconds);
    /// more concurrent logins are answered 429 with Retry-After. 0 = one per core.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_LOGIN_PERMITS", default_value_t = 0)]
    login_permits: usize,
    /// The key-encryption key that seals the signing keys at rest: a file holding a
    /// secret of 32+ bytes (e.g. a mounted Kubernetes Secret). This or --kek is required.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// The key-encryption key itself, 32+ bytes (prefer the variable or --kek-file: a
    /// command line is visible to other users of the host).
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_KEK", hide_env_values = true)]
    kek: Option<String>,
    /// Connections at once per listener; past it, a new connection is closed at once.
    #[arg(long, default_value_t = 1_024)]
    max_connections: usize,
    /// Time allowed for a request's head (request line and headers), milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Time allowed for a handler's answer, milliseconds (503 `timeout` past it).
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// HTTPS on both listeners: the certificate chain (PEM), re-read when it changes.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// INSECURE: serve plain HTTP on a non-loopback address (tokens and keys cross the
    /// network in clear). Only behind something that adds TLS, such as a service mesh.
    #[arg(long, env = "SIGNALCAST_ACCOUNTS_INSECURE_PLAIN_HTTP")]
    insecure_plain_http: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (the default).
    Serve(ServeArgs),
    /// Apply the embedded migrations and exit.
    Migrate,
    /// Load users from an accounts file (fixtures/accounts.toml), all with one password.
    Seed {
        #[arg(long, default_value = "fixtures/accounts.toml")]
        file: PathBuf,
        /// DEV ONLY: every seeded user gets this password.
        #[arg(long, default_value = "signalcast-dev-password")]
        password: String,
    },
    /// Create the first plan, user and producer key of a deployment through a running
    /// sidecar's admin API; prints the password and key (shown once).
    Bootstrap {
        /// The running sidecar's admin API (its `--admin-listen`).
        #[arg(long, env = "SIGNALCAST_ACCOUNTS_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        url: String,
        /// The admin token the sidecar was started with.
        #[arg(long, env = "SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// The user's tier (its plan is created if missing, with the tier as its id).
        #[arg(long, default_value = "enterprise")]
        tier: engine::model::Tier,
        #[arg(long)]
        user_id: String,
        #[arg(long)]
        email: String,
        /// The user's password (default: a random one, printed).
        #[arg(long, hide_env_values = true)]
        password: Option<String>,
        /// Producer id for the first producer key.
        #[arg(long)]
        producer: String,
        /// A signal source (`source_id`, a UUID) the producer publishes under; repeat for
        /// several. Its signals of any other source are refused.
        #[arg(long = "source", required = true)]
        sources: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIGNALCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let db_tls = accounts::db::DbTls::from_ca(cli.database_ca_file.as_deref())?;
    match cli.command {
        Some(Cmd::Serve(args)) => serve(cli.database_url, cli.database_ca_file, args).await?,
        None => serve(cli.database_url, cli.database_ca_file, cli.serve).await?,
        Some(Cmd::Migrate) => {
            let pool = accounts::db::pool(&cli.database_url, 2, Duration::from_secs(30), &db_tls)?;
            let n = accounts::db::migrate(&pool).await?;
            tracing::info!(applied = n, "migrations done");
        }
        Some(Cmd::Seed { file, password }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let pool = accounts::db::pool(&cli.database_url, 2, Duration::from_secs(30), &db_tls)?;
            accounts::db::migrate(&pool).await?;
            let n = accounts::seed::seed(&pool, &text, &password).await?;
            tracing::info!(users = n, file = %file.display(), "seeded");
        }
        Some(Cmd::Bootstrap { url, admin_token, tier, user_id, email, password, producer, sources }) => {
            let plan = accounts::bootstrap::Plan {
                url,
                admin_token,
                tier,
                user_id,
                email,
                password,
                producer_id: producer,
                sources,
            };
            let c = accounts::bootstrap::run(&plan).await?;
            let plan_state = if c.plan_created { "created" } else { "existed" };
            println!("plan      {} ({plan_state})", c.plan_id);
            println!("user      {} ({}), password: {}", c.user_id, plan.email, c.password);
            println!("producer  {}, key: {}", c.producer_id, c.producer_key);
            println!("          publishes under source {}", plan.sources.join(", "));
            println!("(shown once: the sidecar keeps only hashes of the password and the key)");
        }
    }
    Ok(())
}

async fn serve(
    database_url: String,
    database_ca_file: Option<PathBuf>,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let required = |v: Option<String>, flag: &str, var: &str| -> anyhow::Result<String> {
        let v = v.with_context(|| format!("{flag} ({var}) is required"))?;
        anyhow::ensure!(v.len() >= 16, "{flag} ({var}): at least 16 characters");
        Ok(v)
    };
    let admin_token = required(args.admin_token, "--admin-token", "SIGNALCAST_ACCOUNTS_ADMIN_TOKEN")?;
    let gateway_token = required(args.gateway_token, "--gateway-token", "SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN")?;
    let kek = match (&args.kek_file, &args.kek) {
        (Some(path), _) => {
            let secret = std::fs::read(path).with_context(|| format!("--kek-file {}", path.display()))?;
            accounts::kek::Kek::from_secret(&secret)
                .with_context(|| format!("--kek-file {}", path.display()))?
        }
        (None, Some(secret)) => {
            accounts::kek::Kek::from_secret(secret.as_bytes()).context("--kek (SIGNALCAST_ACCOUNTS_KEK)")?
        }
        (None, None) => anyhow::bail!(
            "a key-encryption key is required to seal the signing keys: --kek-file \
             (SIGNALCAST_ACCOUNTS_KEK_FILE) or --kek (SIGNALCAST_ACCOUNTS_KEK), 32+ bytes"
        ),
    };
    let mut config = accounts::Config::new(database_url, admin_token, gateway_token, kek);
    config.access_ttl = Duration::from_secs(args.access_ttl_secs.max(1));
    config.login.hashing_permits = args.login_permits;
    config.http.max_connections = args.max_connections.max(1);
    config.http.header_timeout = Duration::from_millis(args.header_timeout_ms.max(1));
    config.http.request_timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(&args.admin_listen)
        .await
        .with_context(|| format!("listen on {} (admin)", args.admin_listen))?;
    config.tls = args.tls_cert.zip(args.tls_key);
    config.database_ca_file = database_ca_file;

    if config.tls.is_none() && !args.insecure_plain_http {
        for (what, l) in [("--listen", &listener), ("--admin-listen", &admin)] {
            let addr = l.local_addr()?;
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "{what} {addr} is not loopback and there is no --tls-cert/--tls-key: tokens would cross \
                 the network in clear (--insecure-plain-http if something else adds TLS)"
            );
        }
    }
    tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, "signalcast-accounts serving");
    accounts::run(listener, admin, config, shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

//! The `jwt-gate` command line: wiring only, no logic.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use jwt_gate::config::Config;
use jwt_gate::server;
use jwt_gate::tools::{check, demo, explain, import};

#[derive(Parser)]
#[command(
    name = "jwt-gate",
    version,
    about = "Reverse-proxy sidecar that terminates GitLab's JWT login"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `debug`, `jwt_gate::access=warn,info`); also JWT_GATE_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gate.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; list every problem, and what the gate enforces beyond GitLab.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gate in front of an embedded stand-in GitLab and sample identity provider.
    Demo {
        /// Where the gate listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Header-assertion sign-in: a stand-in identity-aware proxy in front of the gate
        /// vouches for the user; GitLab signs in with no click.
        #[arg(long)]
        sso: bool,
    },
    /// Write a development CA, a localhost server certificate and a client certificate.
    DevCert {
        /// Directory for ca.crt, ca.key, tls.crt, tls.key, client.crt, client.key.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
    /// Print the `[provider]` TOML equivalent to GitLab's own JWT provider settings, read
    /// from config/gitlab.yml (source installs) or /etc/gitlab/gitlab.rb (Omnibus).
    ImportGitlab {
        /// gitlab.yml or gitlab.rb
        path: PathBuf,
    },
    /// Explain, check by check, whether a token would pass. The token is read from stdin
    /// (or --token-file): on the command line it would show in the process list and the
    /// shell's history.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// A file holding the token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The token itself (discouraged: visible to other users in the process list).
        token: Option<String>,
    },
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let mut filter = level
        .map(str::to_string)
        .or_else(|| std::env::var("JWT_GATE_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    // h2 and hyper log request targets (the callback's query: a token) at debug and trace;
    // keep them at info unless the operator names them on purpose
    for noisy in ["h2", "hyper"] {
        if !filter.split(',').any(|d| d.trim_start().starts_with(noisy)) {
            filter.push_str(&format!(",{noisy}=info"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colours only on a terminal: escape codes in `kubectl logs` or a journal are noise
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // every line goes through one buffer and a writer thread (telemetry::logbuf): no
    // request waits on stdout; main flushes it before exiting
    jwt_gate::telemetry::logbuf::start();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(jwt_gate::telemetry::logbuf::MakeBuffered);
    match format {
        LogFormat::Json => {
            jwt_gate::telemetry::access::use_json(true);
            b.json().flatten_event(true).init()
        }
        LogFormat::Text => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => check_cmd(&config),
        Cmd::DevCert { dir } => {
            match jwt_gate::tls::write_dev_certs(&dir) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!("Trust ca.crt in your browser or client; never use these files in production.");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("jwt-gate dev-cert: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Explain {
            config,
            token_file,
            token,
        } => explain_cmd(&config, token_file.as_deref(), token),
        Cmd::ImportGitlab { path } => match import::import(&path) {
            Ok(toml) => {
                print!("{toml}");
                let problems = import::problems(&toml);
                if problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("jwt-gate will refuse this [provider] until it is fixed:");
                    for p in problems {
                        eprintln!("  - {p}");
                    }
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("jwt-gate import-gitlab: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Run { config } => {
            init_logging(cli.log_format, cli.log_level.as_deref());
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            runtime(|| run(cfg))
        }
        Cmd::Demo { listen, sso } => {
            init_logging(cli.log_format, cli.log_level.as_deref());
            runtime(|| run_demo(listen, sso))
        }
    }
}

fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // One usable core (a CPU limit of 1, or pinned as in the benchmarks): the current-thread
    // scheduler does the same work without the work-stealing machinery. More cores: one
    // worker thread per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = match std::env::var("JWT_GATE_RUNTIME").ok().as_deref() {
        Some("multi") => tokio::runtime::Builder::new_multi_thread(),
        Some("current") => tokio::runtime::Builder::new_current_thread(),
        _ if cores == 1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(f());
    // every log line written before the exit (SIGTERM included: run returns after draining)
    jwt_gate::telemetry::logbuf::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jwt-gate: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // without signal handlers, only the process being killed stops it
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// SIGHUP re-reads the TLS files and the JWT key file now, changed or not.
fn spawn_sighup_reload(app: Arc<jwt_gate::app::App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; files are still polled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(target: "jwt_gate::reload", "SIGHUP received: reloading");
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload(true)).await;
        }
    });
}

async fn run(cfg: Config) -> Result<(), String> {
    let running = server::start(cfg, shutdown_signal()).await?;
    spawn_sighup_reload(running.app.clone());
    running.wait().await
}

async fn run_demo(listen: String, sso: bool) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let started = if sso {
        demo::start_sso(addr).await
    } else {
        demo::start(addr).await
    };
    let (addrs, config_text, _tasks) = started.map_err(|e| e.to_string())?;
    let cfg = Config::from_toml_str(&config_text).map_err(|e| e.to_string())?;
    let running = server::start_on(listener, cfg, shutdown_signal()).await?;
    println!("jwt-gate demo");
    if sso {
        tracing::info!(addr = %addrs.idp, "demo identity-aware proxy listening");
        println!(
            "  open            http://{}/            (the identity-aware proxy, in front of the gate)",
            addrs.idp
        );
        println!("  the gate        http://{}", running.addr);
        println!(
            "  stand-in GitLab http://{} (direct; do not use)",
            addrs.gitlab
        );
        println!("You are already signed in at the proxy as Zoë: GitLab signs you in with no click. Ctrl-C stops.");
    } else {
        println!(
            "  open            http://{}/            (GitLab stand-in, through the gate)",
            running.addr
        );
        println!("  identity prov.  http://{}/login", addrs.idp);
        println!(
            "  stand-in GitLab http://{} (direct; do not use)",
            addrs.gitlab
        );
        println!("Sign in with JWT, then open the same callback link again to see the replay refused. Ctrl-C stops.");
    }
    running.wait().await
}

fn check_cmd(path: &std::path::Path) -> ExitCode {
    // App::build starts nothing, but the Redis client it makes wants a runtime context
    let (report, ok) = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async { check::check(path) }),
        Err(e) => (format!("cannot start the runtime: {e}"), false),
    };
    if ok {
        print!("{report}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{report}");
        ExitCode::from(1)
    }
}

/// The token for `explain`: from the file, the argument (with a warning), or stdin.
fn read_token(file: Option<&std::path::Path>, arg: Option<String>) -> Result<String, String> {
    if let Some(f) = file {
        return std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()));
    }
    match arg {
        Some(t) if t != "-" => {
            eprintln!("warning: a token on the command line shows in the process list and the shell history; pipe it in or use --token-file");
            Ok(t)
        }
        _ => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
            Ok(s)
        }
    }
}

fn explain_cmd(
    path: &std::path::Path,
    token_file: Option<&std::path::Path>,
    token: Option<String>,
) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let token = match read_token(token_file, token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (report, ok) = explain::explain(&cfg, &token, jwt_gate::clock::unix_now());
    print!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

// mimalloc: 4.4% fewer instructions per proxied request than glibc's malloc (callgrind,
// 4,000 requests; BENCHMARKS.md)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

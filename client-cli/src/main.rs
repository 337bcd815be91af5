//! `chat`, the Daehwa terminal client: account, friends, groups, messages and an interactive
//! chat mode, all through the public `chat.v1` gRPC API.

mod commands;
mod config;
mod names;
mod prompt;
mod render;
mod session;
mod target;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use commands::{auth, friends, groups, interactive, messages, presence};
use session::Ctx;

/// The Daehwa terminal client.
#[derive(Debug, Parser)]
#[command(
    name = "chat",
    version,
    about = "Daehwa chat from the terminal.",
    propagate_version = true
)]
struct Cli {
    /// Server URL [default: the profile's server, else http://127.0.0.1:50051].
    #[arg(long, global = true, env = "DAEHWA_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Profile name: one logged-in user per profile.
    #[arg(long, global = true, env = "DAEHWA_PROFILE", default_value = "default")]
    profile: String,
    /// Print JSON objects, one per line, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and log in (password from DAEHWA_PASSWORD or a prompt).
    Signup {
        /// 3-32 characters of a-z 0-9 _ . -
        username: String,
        /// The name others see.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Log in (password from DAEHWA_PASSWORD or a prompt).
    Login {
        /// Your username.
        username: String,
        /// A label for this device [default: cli@<hostname>].
        #[arg(long)]
        device: Option<String>,
    },
    /// Log out this device and forget its tokens.
    Logout,
    /// Show the logged-in user.
    Whoami,
    /// List friends and requests, or add/remove one.
    Friends {
        #[command(subcommand)]
        cmd: Option<friends::FriendsCmd>,
    },
    /// List groups, or create/add/leave.
    Groups {
        #[command(subcommand)]
        cmd: Option<groups::GroupsCmd>,
    },
    /// Send a text message to @username, #group_id (quote it: '#12'), g:12 or dm:1:2.
    Send {
        /// @username, #<group_id>, g:<group_id> or a conversation id.
        target: String,
        /// The text (several words are joined with spaces).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Show the last messages of a conversation, oldest first.
    History {
        /// @username, #<group_id>, g:<group_id> or a conversation id.
        target: String,
        /// How many messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List conversations with unread counts.
    Conversations,
    /// Show who is online (default: all friends).
    Presence {
        /// Usernames to ask about.
        usernames: Vec<String>,
    },
    /// Chat interactively in one conversation (/quit leaves).
    Chat {
        /// @username, #<group_id>, g:<group_id> or a conversation id.
        target: String,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    config::check_profile_name(&cli.profile)?;
    let ctx = Ctx {
        server: cli.server,
        profile: cli.profile,
        json: cli.json,
        dir: config::default_dir()?,
    };
    match cli.command {
        Command::Signup {
            username,
            display_name,
        } => auth::signup(&ctx, &username, display_name).await,
        Command::Login { username, device } => auth::login(&ctx, &username, device).await,
        Command::Logout => auth::logout(&ctx).await,
        Command::Whoami => auth::whoami(&ctx).await,
        Command::Friends { cmd } => friends::run(&ctx, cmd).await,
        Command::Groups { cmd } => groups::run(&ctx, cmd).await,
        Command::Send { target, text } => messages::send(&ctx, &target, &text).await,
        Command::History { target, limit } => messages::history(&ctx, &target, limit).await,
        Command::Conversations => messages::conversations(&ctx).await,
        Command::Presence { usernames } => presence::run(&ctx, &usernames).await,
        Command::Chat { target } => interactive::run(&ctx, &target).await,
    }
}

/// An error for people: a gRPC status shows only its message (meant for users), other
/// errors show their chain of causes.
pub(crate) fn error_text(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let part = match cause.downcast_ref::<tonic::Status>() {
            Some(status) if status.message().is_empty() => format!("{:?}", status.code()),
            Some(status) => status.message().to_string(),
            None => cause.to_string(),
        };
        if !parts.last().is_some_and(|last| last.ends_with(&part)) {
            parts.push(part);
        }
    }
    render::clean(&parts.join(": ")).into_owned()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A pending read of standard input (interactive mode) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

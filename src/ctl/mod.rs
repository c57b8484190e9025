//! `payctl`, the operator's and developer's tool: migrations, topology, seed data, tokens, SMS
//! codes, the demo and the benchmark.

pub mod bench;
pub mod client;
pub mod demo;
pub mod fleet;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::auth::TokenKeys;
use crate::cache::Cache;
use crate::config::Settings;
use crate::domain::lottery::{PrizeSpec, check_prizes};
use crate::domain::{GoodsKind, Money};
use crate::mq::topology::{QUEUES, Topology};
use crate::password::{PasswordHasher, is_well_formed};
use crate::store::Pool;
use crate::store::users::Balances;

#[derive(Parser, Debug)]
#[command(name = "payctl", version, about = "Operate and try out a payfleet")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the database if needed and apply the migrations.
    Migrate,
    /// Declare every queue (idempotent) and print each queue's depth and consumers.
    Topology {
        /// Print the table of work queues (the README's) instead, touching no broker.
        #[arg(long)]
        markdown: bool,
    },
    /// Users: `user create --money 100.00 --integral 1000 --money2 20.00 [--pay-password 123456]`.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print a bearer token: a user's (`--user ID`), or an operator's for `/admin/v1/…`
    /// (`--operator NAME`, lowercase letters, digits, '.', '_', '-').
    #[command(group(clap::ArgGroup::new("who").required(true).args(["user", "operator"])))]
    Token {
        #[arg(long)]
        user: Option<i64>,
        #[arg(long)]
        operator: Option<String>,
    },
    /// (dev) Issue a pay-password SMS code for a user and print it instead of texting it.
    SmsCode {
        #[arg(long)]
        user: i64,
    },
    /// Goods: `goods create --kind ichiban --name "…" --price 10.00`.
    Goods {
        #[command(subcommand)]
        command: GoodsCommand,
    },
    /// Run the whole fleet against wechat-sim-free demo data and pay orders through the API.
    Demo(demo::DemoArgs),
    /// Measure settled payments per second through the real ingress and worker.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user with opening balances; prints {"user_id":…,"token":"…"}.
    Create {
        #[arg(long, default_value = "0")]
        money: String,
        #[arg(long, default_value = "0")]
        integral: String,
        #[arg(long, default_value = "0")]
        money2: String,
        #[arg(long)]
        pay_password: Option<String>,
        #[arg(long, default_value = "")]
        nickname: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum GoodsCommand {
    /// Create goods with their prizes; prints {"goods_id":…}.
    Create {
        #[arg(long, value_parser = parse_kind)]
        kind: GoodsKind,
        #[arg(long)]
        name: String,
        #[arg(long)]
        price: String,
        /// A prize, repeated: "name:quantity" for ichiban (how many the box holds), "name:weight"
        /// for infinite (its share of the draws).
        #[arg(long = "prize", value_parser = PrizeSpec::parse, required = true)]
        prizes: Vec<PrizeSpec>,
    },
}

fn parse_kind(s: &str) -> Result<GoodsKind, String> {
    GoodsKind::parse(s).ok_or_else(|| format!("{s:?} is not a goods kind (ichiban, infinite)"))
}

/// Parses an amount given on the command line, naming the flag when it is wrong.
pub fn money_arg(flag: &str, text: &str) -> anyhow::Result<Money> {
    Money::parse(text).map_err(|e| anyhow::anyhow!("--{flag} {text:?}: {e}"))
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            migrate(&settings).await?;
            println!("migrations applied");
        }
        Command::Topology { markdown: true } => print!("{}", crate::mq::topology::markdown_table()),
        Command::Topology { markdown: false } => {
            declare_topology(&settings).await?;
            println!("topology declared\n");
            print_depths(&settings).await?;
        }
        Command::User { command: UserCommand::Create { money, integral, money2, pay_password, nickname } } => {
            let opening = Balances {
                money: money_arg("money", &money)?,
                integral: money_arg("integral", &integral)?,
                money2: money_arg("money2", &money2)?,
            };
            let admin = Admin::connect(&settings)?;
            let (user_id, token) = admin.create_user(&nickname, &opening, pay_password.as_deref()).await?;
            println!("{}", json!({ "user_id": user_id, "token": token }));
        }
        Command::Token { user: Some(user), .. } => {
            let admin = Admin::connect(&settings)?;
            if !crate::store::users::exists(&admin.db, user).await? {
                bail!("no user {user}");
            }
            println!("{}", admin.tokens()?.issue(user));
        }
        Command::Token { operator: Some(name), .. } => {
            if !crate::auth::is_operator_name(&name) {
                bail!("an operator name is 1 to 64 lowercase letters, digits, '.', '_' or '-'");
            }
            let admin = Admin::connect(&settings)?;
            let Some(token) = admin.tokens()?.issue_operator(&name) else {
                bail!(
                    "operator tokens need their own key: set PAYFLEET__AUTH__OPERATOR_JWT_SECRET (or auth.operator_jwt_secret_file)"
                );
            };
            println!("{token}");
        }
        Command::Token { .. } => bail!("name --user ID or --operator NAME"),
        Command::SmsCode { user } => {
            let admin = Admin::connect(&settings)?;
            if !crate::store::users::exists(&admin.db, user).await? {
                bail!("no user {user}");
            }
            println!("{}", admin.issue_sms_code(user).await?);
        }
        Command::Goods { command: GoodsCommand::Create { kind, name, price, prizes } } => {
            check_prizes(kind, &prizes).map_err(|e| anyhow::anyhow!(e))?;
            let price = money_arg("price", &price)?;
            let admin = Admin::connect(&settings)?;
            let goods_id = crate::store::goods::create_goods(&admin.db, kind, &name, price, &prizes).await?;
            println!("{}", json!({ "goods_id": goods_id }));
        }
        Command::Demo(args) => demo::run(settings, args).await?,
        Command::Bench(args) => bench::run(settings, args).await?,
    }
    Ok(())
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    crate::store::ensure_database(&settings.database).await.context("creating the database (database.url)")?;
    let pool = crate::store::pool(&settings.database)?;
    crate::store::migrate(&pool).await.context("applying migrations")?;
    pool.close().await;
    Ok(())
}

pub async fn declare_topology(settings: &Settings) -> anyhow::Result<()> {
    let conn = crate::mq::connect(&settings.broker, "payctl").await.context("connecting to the broker (broker.url)")?;
    let channel = conn.create_channel().await?;
    Topology::new(&settings.broker).declare(&channel).await?;
    crate::mq::close(&conn, &channel).await;
    Ok(())
}

/// Prints every queue with its depth and consumers, and says which work queues nothing in this
/// version consumes.
async fn print_depths(settings: &Settings) -> anyhow::Result<()> {
    let conn = crate::mq::connect(&settings.broker, "payctl").await.context("connecting to the broker (broker.url)")?;
    let channel = conn.create_channel().await?;
    let topology = Topology::new(&settings.broker);
    let depths = topology.depths(&channel).await;
    crate::mq::close(&conn, &channel).await;
    println!("{:<48} {:>9} {:>9}", "queue", "messages", "consumers");
    for q in depths? {
        let idle = QUEUES.iter().any(|spec| spec.consumers.is_empty() && q.name == topology.queue(spec.name));
        let note = if idle { "  (no consumer in this version: its messages wait)" } else { "" };
        println!("{:<48} {:>9} {:>9}{note}", q.name, q.messages, q.consumers);
    }
    Ok(())
}

/// Direct access to the database and Redis for seeding and dev helpers.
pub struct Admin {
    pub db: Pool,
    pub cache: Cache,
    settings: Settings,
}

impl Admin {
    pub fn connect(settings: &Settings) -> anyhow::Result<Admin> {
        Ok(Admin {
            db: crate::store::pool(&settings.database)?,
            cache: Cache::new(&settings.redis)?,
            settings: settings.clone(),
        })
    }

    pub fn tokens(&self) -> anyhow::Result<TokenKeys> {
        Ok(self.settings.auth.token_keys()?)
    }

    pub fn passwords(&self) -> anyhow::Result<PasswordHasher> {
        Ok(PasswordHasher::new(self.settings.pay.password_pepper()?, self.settings.pay.bcrypt_cost))
    }

    /// Creates a user and returns its id and a token.
    pub async fn create_user(
        &self,
        nickname: &str,
        opening: &Balances,
        pay_password: Option<&str>,
    ) -> anyhow::Result<(i64, String)> {
        let tokens = self.tokens()?;
        let hash = match pay_password {
            Some(p) if !is_well_formed(p) => bail!("--pay-password must be exactly 6 digits"),
            Some(p) => Some(self.passwords()?.hash(p).await?),
            None => None,
        };
        let user_id = crate::store::users::create_user(&self.db, nickname, opening, hash.as_deref()).await?;
        Ok((user_id, tokens.issue(user_id)))
    }

    /// Issues a six-digit pay-password SMS code (what an SMS gateway would text).
    pub async fn issue_sms_code(&self, user_id: i64) -> anyhow::Result<String> {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let ttl = Duration::from_secs(self.settings.pay.sms_code_ttl_secs);
        self.cache.store_sms_code(crate::cache::PAY_PASSWORD_PURPOSE, user_id, &code, ttl).await?;
        Ok(code)
    }
}

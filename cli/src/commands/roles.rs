//! `healthsense roles`: grant, revoke, check and list the four roles.

use alloy::primitives::Address;
use anyhow::Result;
use clap::Subcommand;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::admin;
use serde_json::json;

use super::output::{done, show, ConfigError};
use super::{Access, Global};

/// `healthsense roles ...`
#[derive(Subcommand)]
pub enum RolesCmd {
    /// Grant ROLE (admin|hub|doctor|insurer) to ADDRESS.
    Grant { role: String, address: Address },
    /// Revoke ROLE from ADDRESS.
    Revoke { role: String, address: Address },
    /// Which roles ADDRESS holds.
    Check { address: Address },
    /// Every current role holder (replayed from the contract's role events).
    List,
}

/// Runs a `roles` command.
pub async fn run(cmd: RolesCmd, g: &Global) -> Result<()> {
    let access = if matches!(cmd, RolesCmd::Grant { .. } | RolesCmd::Revoke { .. }) { Access::Write } else { Access::Read };
    let c = g.client(access)?;
    let j = g.json;
    match cmd {
        RolesCmd::Grant { role, address } => {
            let r = admin::role(&role).map_err(ConfigError)?;
            done(j, &format!("granted {role} to {address}"), c.send(H::grantRoleCall { role: r, account: address }).await?);
        }
        RolesCmd::Revoke { role, address } => {
            let r = admin::role(&role).map_err(ConfigError)?;
            done(j, &format!("revoked {role} from {address}"), c.send(H::revokeRoleCall { role: r, account: address }).await?);
        }
        RolesCmd::Check { address } => {
            let mut held = Vec::new();
            for (name, r) in ids::ROLES {
                if c.view(H::hasRoleCall { role: r, account: address }).await? {
                    held.push(name);
                }
            }
            let text = if held.is_empty() { format!("{address}: no roles") } else { format!("{address}: {}", held.join(", ")) };
            show(j, json!({ "address": address.to_string(), "roles": held }), text);
        }
        RolesCmd::List => {
            let holders = c.role_holders().await?;
            let text = holders
                .iter()
                .map(|(r, a)| format!("{:<8} {a}", admin::role_name(*r)))
                .collect::<Vec<_>>()
                .join("\n");
            let rows: Vec<_> = holders.iter().map(|(r, a)| json!({ "role": admin::role_name(*r), "account": a.to_string() })).collect();
            show(j, json!(rows), text);
        }
    }
    Ok(())
}

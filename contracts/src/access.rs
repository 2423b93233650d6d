//! Roles and pause: the checks every state change starts with.

use alloy_primitives::{Address, B256, U256};
use healthsense_abi::rules::ids;
use stylus_sdk::prelude::*;

use crate::errors::*;
use crate::events::{RoleGranted, RoleRevoked};
use crate::{unauthorized, HealthSense};

impl HealthSense {
    pub(crate) fn holds(&self, role: B256, account: Address) -> bool {
        self.roles.getter(role).get(account)
    }

    /// `AccessControlUnauthorizedAccount` unless the caller holds `role`.
    pub(crate) fn only(&self, role: B256) -> Result<(), Error> {
        let sender = self.vm().msg_sender();
        if self.holds(role, sender) {
            Ok(())
        } else {
            Err(unauthorized(sender, role))
        }
    }

    /// `EnforcedPause` while paused.
    pub(crate) fn not_paused(&self) -> Result<(), Error> {
        if self.paused.get() {
            Err(Error::EnforcedPause(EnforcedPause {}))
        } else {
            Ok(())
        }
    }

    /// Role, then pause: the order docs/CONTRACT.md fixes.
    pub(crate) fn guard(&self, role: B256) -> Result<(), Error> {
        self.only(role)?;
        self.not_paused()
    }

    pub(crate) fn grant(&mut self, role: B256, account: Address) {
        if self.holds(role, account) {
            return;
        }
        self.roles.setter(role).setter(account).set(true);
        if role == ids::ADMIN_ROLE {
            let n = self.admin_count.get() + U256::from(1);
            self.admin_count.set(n);
        }
        let sender = self.vm().msg_sender();
        self.vm().log(RoleGranted { role, account, sender });
    }

    pub(crate) fn revoke(&mut self, role: B256, account: Address) -> Result<(), Error> {
        if !self.holds(role, account) {
            return Ok(());
        }
        if role == ids::ADMIN_ROLE {
            let n = self.admin_count.get();
            if n <= U256::from(1) {
                return Err(Error::LastAdmin(LastAdmin {}));
            }
            self.admin_count.set(n - U256::from(1));
        }
        self.roles.setter(role).setter(account).set(false);
        let sender = self.vm().msg_sender();
        self.vm().log(RoleRevoked { role, account, sender });
        Ok(())
    }
}

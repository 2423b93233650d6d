//! Status and category codes, as `uint8` on chain.

/// Device lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum DeviceStatus {
    /// Never provisioned.
    None = 0,
    /// Provisioned by an admin, waiting for its hub's hello.
    Pending = 1,
    /// Accepted by a hub; may be assigned to a patient.
    Active = 2,
    /// Withdrawn; its readings are rejected.
    Revoked = 3,
}

/// Patient (stay) lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum PatientStatus {
    /// Never admitted.
    None = 0,
    /// In a bed; charges may be added.
    Admitted = 1,
    /// Bill computed; waiting for the archive.
    Discharged = 2,
    /// Record pinned to IPFS, CID on chain.
    Archived = 3,
}

/// Charge categories; a policy covers a bitmask of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Category {
    /// Bed days (the ward tariff) and bed-related charges.
    Bed = 0,
    /// Consultations.
    Consultation = 1,
    /// Procedures.
    Procedure = 2,
    /// Medication.
    Medication = 3,
    /// Laboratory tests.
    Laboratory = 4,
    /// Imaging.
    Imaging = 5,
    /// Consumables.
    Consumables = 6,
    /// Anything else.
    Other = 7,
}

/// Number of charge categories; valid codes are `0..CATEGORY_COUNT`.
pub const CATEGORY_COUNT: usize = 8;

macro_rules! codes {
    ($ty:ident { $($v:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// All values, in code order.
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
            /// The value of an on-chain code, if known.
            pub fn from_code(code: u8) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| *v as u8 == code)
            }
            /// The value of its lower-case name, if known.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(name))
            }
            /// Lower-case name, as the CLI and API print it.
            pub fn name(self) -> &'static str {
                match self { $($ty::$v => $name),* }
            }
        }
    };
}

codes!(DeviceStatus { None => "none", Pending => "pending", Active => "active", Revoked => "revoked" });
codes!(PatientStatus { None => "none", Admitted => "admitted", Discharged => "discharged", Archived => "archived" });
codes!(Category {
    Bed => "bed", Consultation => "consultation", Procedure => "procedure", Medication => "medication",
    Laboratory => "laboratory", Imaging => "imaging", Consumables => "consumables", Other => "other",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::from_code(*c as u8), Some(*c));
            assert_eq!(Category::from_name(c.name()), Some(*c));
        }
        assert_eq!(Category::ALL.len(), CATEGORY_COUNT);
        assert_eq!(Category::from_code(8), None);
        assert_eq!(DeviceStatus::from_code(3), Some(DeviceStatus::Revoked));
        assert_eq!(PatientStatus::from_name("Archived"), Some(PatientStatus::Archived));
        assert_eq!(PatientStatus::from_code(4), None);
    }
}

//! SMEP identities: the system user, group and ports an environment's project states run with
//! on its agent. `smep = S*10000 + M*100 + E*10`: S the master's sheet (1-5), M the
//! environment's number on its agent (01-99), E its platform (prod 0, dev 2, staging 3). The
//! uid and gid are `smep`, the ports `smep..smep+9`, user and group `corpus-<smep>`. The agent
//! builds its half (creating the account, dropping privileges) from the `common` fields
//! [`EnvIdentity::common_fields`] writes; this module only computes numbers.

use std::collections::BTreeSet;

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use crate::store::Platform;

/// The sheet a master without `sheet:` in its config belongs to.
pub const DEFAULT_SHEET: &str = "corpus";

/// Environment numbers an agent hands out: M is two digits and 00 is kept for the sheet's
/// own infrastructure, as in the scheme corpus borrows.
pub const MACHINE_NUMBERS: std::ops::RangeInclusive<u32> = 1..=99;

/// How many ports an environment owns, from its SMEP base up.
pub const PORTS_PER_ENVIRONMENT: u32 = 10;

/// The sheet number S of a sheet name: the first hex digit of the md5 of the name followed by a
/// newline (what `echo "$sheet" | md5sum` hashes, as seed 000 computes it), reduced to 1-5 so
/// that the highest port, `5 99 3 9` = 59939, stays under 65536.
pub fn sheet_number(sheet: &str) -> u32 {
    let digest = Md5::new()
        .chain_update(sheet.as_bytes())
        .chain_update(b"\n")
        .finalize();
    let first_hex_digit = u32::from(digest[0] >> 4);
    first_hex_digit % 5 + 1
}

/// E: the platform's digit.
pub fn platform_digit(platform: Platform) -> u32 {
    match platform {
        Platform::Prod => 0,
        Platform::Dev => 2,
        Platform::Staging => 3,
    }
}

/// The lowest environment number not in `used`, or None when the agent has all 99.
pub fn free_machine_number(used: &BTreeSet<u32>) -> Option<u32> {
    MACHINE_NUMBERS.clone().find(|m| !used.contains(m))
}

/// The M of a SMEP base (its thousands and hundreds digits).
pub fn machine_number(smep: u32) -> u32 {
    smep / 100 % 100
}

/// An environment's identity on its agent, derived entirely from its SMEP base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvIdentity {
    pub smep: u32,
}

impl EnvIdentity {
    pub fn new(sheet: u32, machine: u32, platform: Platform) -> EnvIdentity {
        EnvIdentity {
            smep: sheet * 10_000 + machine * 100 + platform_digit(platform) * 10,
        }
    }

    pub fn uid(self) -> u32 {
        self.smep
    }

    pub fn gid(self) -> u32 {
        self.smep
    }

    /// The user and group name, `corpus-<smep>`.
    pub fn user(self) -> String {
        format!("corpus-{}", self.smep)
    }

    pub fn ports(self) -> Vec<u32> {
        (self.smep..self.smep + PORTS_PER_ENVIRONMENT).collect()
    }

    /// What every systemd unit the environment's states may touch starts with.
    pub fn service_prefix(self) -> String {
        format!("corpus-{}-", self.smep)
    }

    /// The contract's `common` fields: `uid`, `gid`, `user`, `group`, `ports`, `smep`.
    pub fn common_fields(self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("uid".into(), json!(self.uid()));
        fields.insert("gid".into(), json!(self.gid()));
        fields.insert("user".into(), json!(self.user()));
        fields.insert("group".into(), json!(self.user()));
        fields.insert("ports".into(), json!(self.ports()));
        fields.insert("smep".into(), json!(self.smep));
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_numbers_follow_md5sum_of_the_name_and_stay_between_1_and_5() {
        // `echo corpus | md5sum` starts with b (11): 11 % 5 + 1 = 2.
        for (sheet, expected) in [("corpus", 2), ("test-a", 4), ("test-b", 1), ("alpha", 5)] {
            assert_eq!(sheet_number(sheet), expected, "{sheet}");
        }
        for name in ["", "x", "dynamicalsystem", "a-very-long-sheet-name"] {
            assert!((1..=5).contains(&sheet_number(name)), "{name}");
        }
    }

    #[test]
    fn identities_follow_the_contract() {
        let staging = EnvIdentity::new(1, 23, Platform::Staging);
        assert_eq!(staging.smep, 12330);
        assert_eq!(EnvIdentity::new(1, 23, Platform::Dev).smep, 12320);
        assert_eq!(EnvIdentity::new(5, 99, Platform::Prod).smep, 59900);
        assert_eq!((staging.uid(), staging.gid()), (12330, 12330));
        assert_eq!(staging.user(), "corpus-12330");
        assert_eq!(staging.ports(), (12330..=12339).collect::<Vec<_>>());
        assert_eq!(staging.service_prefix(), "corpus-12330-");
        assert_eq!(machine_number(staging.smep), 23);
        let common = Value::Object(staging.common_fields());
        assert_eq!(
            common,
            json!({"uid": 12330, "gid": 12330, "user": "corpus-12330", "group": "corpus-12330",
                   "ports": [12330, 12331, 12332, 12333, 12334, 12335, 12336, 12337, 12338, 12339],
                   "smep": 12330})
        );
        // The highest identity's ports are valid.
        assert!(
            EnvIdentity::new(5, 99, Platform::Staging)
                .ports()
                .iter()
                .all(|p| *p < 65536)
        );
    }

    #[test]
    fn machine_numbers_are_the_lowest_free_and_run_out_at_99() {
        assert_eq!(free_machine_number(&BTreeSet::new()), Some(1));
        assert_eq!(free_machine_number(&BTreeSet::from([1, 2, 4])), Some(3));
        let all: BTreeSet<u32> = MACHINE_NUMBERS.collect();
        assert_eq!(free_machine_number(&all), None);
    }
}

//! Conformance: every scenario runs on three engines with identical
//! calldata: the Stylus edition's source (TestVM, through its router), its
//! WASM artifacts (the Stylus host) and the EVM edition (real anvil);
//! `Twin` fails on any difference in success, return data, revert data or
//! logs, and on any difference in the two Stylus engines' storage. The assertions here additionally pin each result to the spec
//! (docs/CONTRACT.md) and to the shared rules in `healthsense-abi`.

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use alloy::sol_types::{SolCall, SolError, SolEvent};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::bindings::IHealthSense::BillInfo;
use healthsense_abi::rules::{billing, eip712, ids, merkle::StandardTree, reading::reading_leaf};
use healthsense_abi::Reading;
use healthsense_tests::evm::CHAIN_ID;
use healthsense_tests::twin::Twin;

const DAY: u64 = 86_400;

fn ward(n: &str) -> B256 {
    ids::ward_id(n)
}

fn code(c: &str) -> B256 {
    ids::charge_code(c).expect("short code")
}

/// A device with its own key, provisioned (and optionally activated).
struct Device {
    id: B256,
    key: PrivateKeySigner,
}

fn device(t: &mut Twin, serial: &str, ward_name: &str, activate: bool) -> Device {
    let key = PrivateKeySigner::random();
    let id = ids::device_id(serial);
    t.ok(t.who.admin, H::provisionDeviceCall { deviceId: id, signer: key.address(), ward: ward(ward_name) });
    if activate {
        t.ok(t.who.hub, H::activateDeviceCall { deviceId: id });
    }
    Device { id, key }
}

fn grant_all(t: &mut Twin) {
    let w = t.who;
    for (role, acct) in [
        (ids::HUB_ROLE, w.hub),
        (ids::HUB_ROLE, w.hub2),
        (ids::DOCTOR_ROLE, w.doctor),
        (ids::DOCTOR_ROLE, w.doctor2),
        (ids::INSURER_ROLE, w.insurer),
        (ids::INSURER_ROLE, w.insurer2),
    ] {
        t.ok(w.admin, H::grantRoleCall { role, account: acct });
    }
}

fn reading(dev: &Device, seq: u64) -> Reading {
    healthsense_tests::sample_reading(dev.id, seq)
}

fn sign(dev: &Device, twin: &Twin, r: &Reading) -> Bytes {
    let digest = eip712::reading_digest(eip712::domain_separator(CHAIN_ID, twin.evm.address), r);
    let sig = dev.key.sign_hash_sync(&digest).expect("signing works");
    Bytes::from(sig.as_bytes().to_vec())
}

fn unauthorized(account: Address, role: B256) -> H::AccessControlUnauthorizedAccount {
    H::AccessControlUnauthorizedAccount { account, neededRole: role }
}

#[test]
fn test_roles_grant_revoke_renounce() {
    let mut t = Twin::new();
    let w = t.who;
    assert_eq!(t.ok(w.stranger, H::ADMIN_ROLECall {}), ids::ADMIN_ROLE);
    assert_eq!(t.ok(w.stranger, H::HUB_ROLECall {}), ids::HUB_ROLE);
    assert_eq!(t.ok(w.stranger, H::DOCTOR_ROLECall {}), ids::DOCTOR_ROLE);
    assert_eq!(t.ok(w.stranger, H::INSURER_ROLECall {}), ids::INSURER_ROLE);
    assert!(t.ok(w.stranger, H::hasRoleCall { role: ids::ADMIN_ROLE, account: w.admin }));
    assert!(!t.ok(w.stranger, H::hasRoleCall { role: ids::HUB_ROLE, account: w.hub }));

    let out = t.ok_logs(w.admin, H::grantRoleCall { role: ids::HUB_ROLE, account: w.hub });
    assert_eq!(out.logs.len(), 1);
    assert_eq!(out.logs[0].0[0], H::RoleGranted::SIGNATURE_HASH);
    assert!(t.ok(w.stranger, H::hasRoleCall { role: ids::HUB_ROLE, account: w.hub }));
    // Granting again is a no-op without an event.
    assert!(t.ok_logs(w.admin, H::grantRoleCall { role: ids::HUB_ROLE, account: w.hub }).logs.is_empty());

    t.fails(w.admin, H::grantRoleCall { role: B256::repeat_byte(7), account: w.hub }, H::UnknownRole { role: B256::repeat_byte(7) });
    t.fails(w.admin, H::grantRoleCall { role: ids::HUB_ROLE, account: Address::ZERO }, H::ZeroAddress {});
    t.fails(w.hub, H::grantRoleCall { role: ids::HUB_ROLE, account: w.hub2 }, unauthorized(w.hub, ids::ADMIN_ROLE));

    let out = t.ok_logs(w.admin, H::revokeRoleCall { role: ids::HUB_ROLE, account: w.hub });
    assert_eq!(out.logs[0].0[0], H::RoleRevoked::SIGNATURE_HASH);
    assert!(t.ok_logs(w.admin, H::revokeRoleCall { role: ids::HUB_ROLE, account: w.hub }).logs.is_empty());
    t.fails(w.admin, H::revokeRoleCall { role: ids::ADMIN_ROLE, account: w.admin }, H::LastAdmin {});
    t.fails(w.admin, H::renounceRoleCall { role: ids::ADMIN_ROLE, callerConfirmation: w.admin }, H::LastAdmin {});
    t.fails(w.admin, H::renounceRoleCall { role: ids::ADMIN_ROLE, callerConfirmation: w.stranger }, H::AccessControlBadConfirmation {});

    // With a second admin the first may leave.
    t.ok(w.admin, H::grantRoleCall { role: ids::ADMIN_ROLE, account: w.doctor });
    t.ok(w.admin, H::renounceRoleCall { role: ids::ADMIN_ROLE, callerConfirmation: w.admin });
    assert!(!t.ok(w.stranger, H::hasRoleCall { role: ids::ADMIN_ROLE, account: w.admin }));
    t.fails(w.admin, H::grantRoleCall { role: ids::HUB_ROLE, account: w.hub }, unauthorized(w.admin, ids::ADMIN_ROLE));
    t.fails(w.doctor, H::revokeRoleCall { role: ids::ADMIN_ROLE, account: w.doctor }, H::LastAdmin {});
    // Renouncing a role one lacks is a no-op.
    assert!(t.ok_logs(w.stranger, H::renounceRoleCall { role: ids::HUB_ROLE, callerConfirmation: w.stranger }).logs.is_empty());
}

#[test]
fn test_pause_blocks_state_changes_but_not_role_management() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let dev = device(&mut t, "HS-1", "ward-1", true);
    let p = B256::repeat_byte(0x11);
    t.ok(w.admin, H::setTariffCall { ward: ward("ward-1"), dailyRate: 30_000 });
    t.ok(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id });

    t.fails(w.hub, H::pauseCall {}, unauthorized(w.hub, ids::ADMIN_ROLE));
    t.fails(w.admin, H::unpauseCall {}, H::ExpectedPause {});
    let out = t.ok_logs(w.admin, H::pauseCall {});
    assert_eq!(out.logs[0].0[0], H::Paused::SIGNATURE_HASH);
    assert!(t.ok(w.stranger, H::pausedCall {}));
    t.fails(w.admin, H::pauseCall {}, H::EnforcedPause {});

    let k = PrivateKeySigner::random().address();
    t.fails(w.admin, H::provisionDeviceCall { deviceId: B256::repeat_byte(9), signer: k, ward: ward("w") }, H::EnforcedPause {});
    t.fails(w.hub, H::activateDeviceCall { deviceId: dev.id }, H::EnforcedPause {});
    t.fails(w.admin, H::revokeDeviceCall { deviceId: dev.id }, H::EnforcedPause {});
    t.fails(w.doctor, H::admitPatientCall { patientId: B256::repeat_byte(2), deviceId: dev.id }, H::EnforcedPause {});
    t.fails(w.doctor, H::addChargeCall { patientId: p, code: code("X"), category: 1, quantity: 1, unitPrice: 1 }, H::EnforcedPause {});
    t.fails(w.admin, H::setTariffCall { ward: ward("w"), dailyRate: 1 }, H::EnforcedPause {});
    t.fails(w.insurer, H::setPolicyCall { patientId: p, coverageBps: 1, deductible: 0, cap: 1, coveredCategories: 1 }, H::EnforcedPause {});
    t.fails(w.doctor, H::dischargeCall { patientId: p }, H::EnforcedPause {});
    t.fails(w.hub, H::setArchiveCall { patientId: p, cid: "bafy".into(), recordHash: B256::ZERO }, H::EnforcedPause {});
    t.fails(w.admin, H::setBillingRulesCall { cid: "bafy".into() }, H::EnforcedPause {});
    t.fails(w.hub, H::anchorBatchCall { seq: 1, root: B256::repeat_byte(1), leafCount: 1 }, H::EnforcedPause {});
    t.fails(w.hub, H::postReadingsCall { readings: vec![], signatures: vec![] }, H::EnforcedPause {});
    // Role check comes before the pause check.
    t.fails(w.stranger, H::dischargeCall { patientId: p }, unauthorized(w.stranger, ids::DOCTOR_ROLE));
    // Role management still works, so a compromised hub can be cut off.
    t.ok(w.admin, H::revokeRoleCall { role: ids::HUB_ROLE, account: w.hub2 });

    let out = t.ok_logs(w.admin, H::unpauseCall {});
    assert_eq!(out.logs[0].0[0], H::Unpaused::SIGNATURE_HASH);
    t.ok(w.doctor, H::addChargeCall { patientId: p, code: code("X"), category: 1, quantity: 1, unitPrice: 1 });
}

/// Each state-changing function, called by every actor that lacks its role
/// (reverts naming the role), then by the one that has it (succeeds).
#[test]
fn test_role_matrix() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let all = [w.admin, w.hub, w.doctor, w.insurer, w.stranger];
    let holders = |role: B256| -> Vec<Address> {
        match role {
            r if r == ids::ADMIN_ROLE => vec![w.admin],
            r if r == ids::HUB_ROLE => vec![w.hub],
            r if r == ids::DOCTOR_ROLE => vec![w.doctor],
            _ => vec![w.insurer],
        }
    };
    macro_rules! matrix {
        ($role:expr, $allowed:expr, $call:expr) => {{
            let allowed: Vec<Address> = $allowed;
            for a in all.iter().copied().filter(|a| !allowed.contains(a)) {
                t.fails(a, $call, unauthorized(a, $role));
            }
            t.ok(allowed[0], $call);
        }};
    }
    let key = PrivateKeySigner::random();
    let d = ids::device_id("M-1");
    let p = B256::repeat_byte(0x21);
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::provisionDeviceCall { deviceId: d, signer: key.address(), ward: ward("m") });
    matrix!(ids::HUB_ROLE, holders(ids::HUB_ROLE), H::activateDeviceCall { deviceId: d });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::setTariffCall { ward: ward("m"), dailyRate: 100 });
    matrix!(ids::DOCTOR_ROLE, holders(ids::DOCTOR_ROLE), H::admitPatientCall { patientId: p, deviceId: d });
    matrix!(ids::DOCTOR_ROLE, holders(ids::DOCTOR_ROLE), H::addChargeCall { patientId: p, code: code("C1"), category: 2, quantity: 3, unitPrice: 50 });
    matrix!(ids::INSURER_ROLE, holders(ids::INSURER_ROLE), H::setPolicyCall { patientId: p, coverageBps: 5_000, deductible: 0, cap: 1_000, coveredCategories: 0xff });
    matrix!(ids::HUB_ROLE, holders(ids::HUB_ROLE), H::anchorBatchCall { seq: 1, root: B256::repeat_byte(3), leafCount: 2 });
    let dev = Device { id: d, key };
    let r = reading(&dev, 1);
    let sig = sign(&dev, &t, &r);
    matrix!(ids::HUB_ROLE, holders(ids::HUB_ROLE), H::postReadingsCall { readings: vec![r.clone().into()], signatures: vec![sig.clone()] });
    // discharge: HUB or DOCTOR; the error names DOCTOR_ROLE.
    matrix!(ids::DOCTOR_ROLE, vec![w.hub, w.doctor], H::dischargeCall { patientId: p });
    matrix!(ids::HUB_ROLE, holders(ids::HUB_ROLE), H::setArchiveCall { patientId: p, cid: "bafkrei".into(), recordHash: B256::repeat_byte(4) });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::setBillingRulesCall { cid: "bafkrules".into() });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::revokeDeviceCall { deviceId: d });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::grantRoleCall { role: ids::HUB_ROLE, account: w.stranger });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::revokeRoleCall { role: ids::HUB_ROLE, account: w.stranger });
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::pauseCall {});
    matrix!(ids::ADMIN_ROLE, holders(ids::ADMIN_ROLE), H::unpauseCall {});
    // The doctor alone may also discharge: a second patient shows it.
    let d2 = device(&mut t, "M-2", "m", true);
    let p2 = B256::repeat_byte(0x22);
    t.ok(w.doctor, H::admitPatientCall { patientId: p2, deviceId: d2.id });
    t.ok(w.doctor, H::dischargeCall { patientId: p2 });
    assert!(t.calls > 60, "matrix exercised {} calls", t.calls);
}

#[test]
fn test_device_lifecycle_and_errors() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let key = PrivateKeySigner::random().address();
    let id = ids::device_id("HS-0001");
    t.fails(w.admin, H::provisionDeviceCall { deviceId: B256::ZERO, signer: key, ward: ward("a") }, H::ZeroId {});
    t.fails(w.admin, H::provisionDeviceCall { deviceId: id, signer: key, ward: B256::ZERO }, H::ZeroId {});
    t.fails(w.admin, H::provisionDeviceCall { deviceId: id, signer: Address::ZERO, ward: ward("a") }, H::ZeroAddress {});
    let out = t.ok_logs(w.admin, H::provisionDeviceCall { deviceId: id, signer: key, ward: ward("a") });
    assert_eq!(out.logs[0].0[0], H::DeviceProvisioned::SIGNATURE_HASH);
    t.fails(w.admin, H::provisionDeviceCall { deviceId: id, signer: key, ward: ward("a") }, H::DeviceAlreadyExists { deviceId: id });
    let d = t.ok(w.stranger, H::getDeviceCall { deviceId: id });
    assert_eq!((d.signer, d.ward, d.status, d.patientId, d.lastSeq), (key, ward("a"), 1, B256::ZERO, 0));

    let unknown = ids::device_id("nope");
    t.fails(w.hub, H::activateDeviceCall { deviceId: unknown }, H::UnknownDevice { deviceId: unknown });
    t.ok(w.hub, H::activateDeviceCall { deviceId: id });
    t.fails(w.hub, H::activateDeviceCall { deviceId: id }, H::InvalidDeviceStatus { deviceId: id, status: 2 });
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: id }).status, 2);

    t.fails(w.admin, H::revokeDeviceCall { deviceId: unknown }, H::UnknownDevice { deviceId: unknown });
    t.ok(w.admin, H::revokeDeviceCall { deviceId: id });
    t.fails(w.admin, H::revokeDeviceCall { deviceId: id }, H::InvalidDeviceStatus { deviceId: id, status: 3 });
    t.fails(w.hub, H::activateDeviceCall { deviceId: id }, H::InvalidDeviceStatus { deviceId: id, status: 3 });
    // A revoked device cannot be assigned.
    t.fails(w.doctor, H::admitPatientCall { patientId: B256::repeat_byte(1), deviceId: id }, H::InvalidDeviceStatus { deviceId: id, status: 3 });
    // Unknown devices read as zero.
    let z = t.ok(w.stranger, H::getDeviceCall { deviceId: unknown });
    assert_eq!((z.signer, z.status), (Address::ZERO, 0));
}

#[test]
fn test_admission_charges_policy_and_status_transitions() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let dev = device(&mut t, "HS-2", "ward-2", true);
    let pending = device(&mut t, "HS-3", "ward-2", false);
    let p = B256::repeat_byte(0x31);
    t.ok(w.admin, H::setTariffCall { ward: ward("ward-2"), dailyRate: 30_000 });

    t.fails(w.doctor, H::admitPatientCall { patientId: B256::ZERO, deviceId: dev.id }, H::ZeroId {});
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: pending.id }, H::InvalidDeviceStatus { deviceId: pending.id, status: 1 });
    let unknown = ids::device_id("zz");
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: unknown }, H::UnknownDevice { deviceId: unknown });
    let out = t.ok_logs(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id });
    assert_eq!(out.logs[0].0[0], H::PatientAdmitted::SIGNATURE_HASH);
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id }, H::PatientAlreadyExists { patientId: p });
    let p2 = B256::repeat_byte(0x32);
    t.fails(w.doctor, H::admitPatientCall { patientId: p2, deviceId: dev.id }, H::DeviceInUse { deviceId: dev.id, patientId: p });
    let pat = t.ok(w.stranger, H::getPatientCall { patientId: p });
    assert_eq!((pat.deviceId, pat.ward, pat.status, pat.chargeCount), (dev.id, ward("ward-2"), 1, 0));
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).patientId, p);

    t.fails(w.doctor, H::addChargeCall { patientId: p, code: code("A"), category: 8, quantity: 1, unitPrice: 1 }, H::InvalidCharge { category: 8, quantity: 1 });
    t.fails(w.doctor, H::addChargeCall { patientId: p, code: code("A"), category: 1, quantity: 0, unitPrice: 1 }, H::InvalidCharge { category: 1, quantity: 0 });
    t.fails(w.doctor, H::addChargeCall { patientId: p2, code: code("A"), category: 1, quantity: 1, unitPrice: 1 }, H::UnknownPatient { patientId: p2 });
    let out = t.ok_logs(w.doctor, H::addChargeCall { patientId: p, code: code("99213"), category: 1, quantity: 2, unitPrice: 7_500 });
    let ev = H::ChargeAdded::decode_raw_log(out.logs[0].0.iter().copied(), &out.logs[0].1).unwrap();
    assert_eq!((ev.index, ev.quantity, ev.unitPrice, ev.doctor), (0, 2, 7_500, w.doctor));
    t.ok(w.doctor2, H::addChargeCall { patientId: p, code: code("J1100"), category: 3, quantity: 1, unitPrice: 1_250 });
    let c = t.ok(w.stranger, H::getChargeCall { patientId: p, index: 1 });
    assert_eq!((c.code, c.category, c.quantity, c.unitPrice, c.doctor), (code("J1100"), 3, 1, 1_250, w.doctor2));
    t.fails(w.stranger, H::getChargeCall { patientId: p, index: 2 }, H::UnknownCharge { patientId: p, index: 2 });

    t.fails(w.insurer, H::setPolicyCall { patientId: p, coverageBps: 10_001, deductible: 0, cap: 0, coveredCategories: 0 }, H::InvalidPolicy { coverageBps: 10_001 });
    t.fails(w.insurer, H::setPolicyCall { patientId: p2, coverageBps: 1, deductible: 0, cap: 0, coveredCategories: 0 }, H::UnknownPatient { patientId: p2 });
    t.ok(w.insurer, H::setPolicyCall { patientId: p, coverageBps: 9_000, deductible: 500, cap: 1_000_000, coveredCategories: 0b11 });
    t.fails(w.insurer2, H::setPolicyCall { patientId: p, coverageBps: 1, deductible: 0, cap: 0, coveredCategories: 0 }, H::NotPolicyInsurer { patientId: p, insurer: w.insurer });
    t.ok(w.insurer, H::setPolicyCall { patientId: p, coverageBps: 8_000, deductible: 500, cap: 1_000_000, coveredCategories: 0b11 });
    let pol = t.ok(w.stranger, H::getPolicyCall { patientId: p });
    assert_eq!((pol.insurer, pol.coverageBps, pol.deductible, pol.cap, pol.coveredCategories), (w.insurer, 8_000, 500, 1_000_000, 0b11));

    // No archive before discharge.
    t.fails(w.hub, H::setArchiveCall { patientId: p, cid: "bafy".into(), recordHash: B256::ZERO }, H::InvalidPatientStatus { patientId: p, status: 1 });
    t.ok(w.hub, H::dischargeCall { patientId: p });
    // No charge, policy or second discharge after discharge.
    t.fails(w.doctor, H::addChargeCall { patientId: p, code: code("A"), category: 1, quantity: 1, unitPrice: 1 }, H::InvalidPatientStatus { patientId: p, status: 2 });
    t.fails(w.insurer, H::setPolicyCall { patientId: p, coverageBps: 1, deductible: 0, cap: 0, coveredCategories: 0 }, H::InvalidPatientStatus { patientId: p, status: 2 });
    t.fails(w.doctor, H::dischargeCall { patientId: p }, H::InvalidPatientStatus { patientId: p, status: 2 });
    t.fails(w.doctor, H::dischargeCall { patientId: p2 }, H::UnknownPatient { patientId: p2 });
    // The device is free again.
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).patientId, B256::ZERO);
    t.ok(w.doctor, H::admitPatientCall { patientId: p2, deviceId: dev.id });

    t.fails(w.hub, H::setArchiveCall { patientId: p, cid: "".into(), recordHash: B256::ZERO }, H::EmptyCid {});
    t.fails(w.hub, H::setArchiveCall { patientId: B256::repeat_byte(0x99), cid: "bafy".into(), recordHash: B256::ZERO }, H::UnknownPatient { patientId: B256::repeat_byte(0x99) });
    let out = t.ok_logs(w.hub, H::setArchiveCall { patientId: p, cid: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into(), recordHash: B256::repeat_byte(5) });
    assert_eq!(out.logs[0].0[0], H::RecordArchived::SIGNATURE_HASH);
    let a = t.ok(w.stranger, H::getArchiveCall { patientId: p });
    assert_eq!((a.cid.as_str(), a.recordHash), ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", B256::repeat_byte(5)));
    assert_eq!(t.ok(w.stranger, H::getPatientCall { patientId: p }).status, 3);
    t.fails(w.hub, H::setArchiveCall { patientId: p, cid: "bafy".into(), recordHash: B256::ZERO }, H::InvalidPatientStatus { patientId: p, status: 3 });

    t.fails(w.admin, H::setBillingRulesCall { cid: "".into() }, H::EmptyCid {});
    t.ok(w.admin, H::setBillingRulesCall { cid: "bafkrules1".into() });
    t.ok(w.admin, H::setBillingRulesCall { cid: "bafkrules2".into() });
    let r = t.ok(w.stranger, H::billingRulesCall {});
    assert_eq!((r.cid.as_str(), r.version), ("bafkrules2", 2));
}

/// Issue 20: no stay starts in a ward without a bed rate, and a rate is
/// never zero, so no bill counts bed days at a rate nobody set. The refusal
/// comes last in the check order (after every device check); an operator
/// who must admit before the price is known sets a provisional rate and
/// updates it: the bill uses the rate in force at discharge.
#[test]
fn test_admission_needs_a_ward_tariff_and_the_bill_uses_the_rate_at_discharge() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let unpriced = ward("ward-new");
    let dev = device(&mut t, "HS-N1", "ward-new", true);
    let pending = device(&mut t, "HS-N2", "ward-new", false);
    let p = B256::repeat_byte(0x71);
    assert_eq!(t.ok(w.stranger, H::tariffCall { ward: unpriced }), 0);
    // Device checks come first.
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: pending.id }, H::InvalidDeviceStatus { deviceId: pending.id, status: 1 });
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id }, H::WardHasNoTariff { ward: unpriced });
    assert_eq!(t.ok(w.stranger, H::getPatientCall { patientId: p }).status, 0);
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).patientId, B256::ZERO);
    // A zero rate is refused, after the ward argument's own check.
    t.fails(w.admin, H::setTariffCall { ward: B256::ZERO, dailyRate: 0 }, H::ZeroId {});
    t.fails(w.admin, H::setTariffCall { ward: unpriced, dailyRate: 0 }, H::ZeroTariff { ward: unpriced });
    t.fails(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id }, H::WardHasNoTariff { ward: unpriced });

    // Admit first, price later: a provisional rate, then the real one.
    t.ok(w.admin, H::setTariffCall { ward: unpriced, dailyRate: 1 });
    t.ok(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id });
    let admitted = t.ok(w.stranger, H::getPatientCall { patientId: p }).admittedAt;
    t.ok(w.admin, H::setTariffCall { ward: unpriced, dailyRate: 42_000 });
    t.fails(w.admin, H::setTariffCall { ward: unpriced, dailyRate: 0 }, H::ZeroTariff { ward: unpriced });
    t.time = admitted + 2 * DAY;
    t.ok(w.doctor, H::dischargeCall { patientId: p });
    let bill = t.ok(w.stranger, H::getBillCall { patientId: p });
    assert_eq!((bill.bedDays, bill.total), (2, U256::from(2 * 42_000)));
}

/// Admits, charges, insures and discharges a patient after `stay` seconds,
/// returning the contract's bill and the one the shared rule computes.
fn bill_case(
    t: &mut Twin,
    tag: u8,
    rate: u64,
    charges: &[(u8, u32, u64)],
    policy: Option<billing::Policy>,
    stay: u64,
) -> (BillInfo, billing::Bill) {
    let w = t.who;
    let ward_name = format!("bill-{tag}");
    t.ok(w.admin, H::setTariffCall { ward: ward(&ward_name), dailyRate: rate });
    assert_eq!(t.ok(w.stranger, H::tariffCall { ward: ward(&ward_name) }), rate);
    let dev = device(t, &format!("B-{tag}"), &ward_name, true);
    let p = B256::repeat_byte(tag);
    t.ok(w.doctor, H::admitPatientCall { patientId: p, deviceId: dev.id });
    let mut totals = [U256::ZERO; 8];
    for (cat, q, price) in charges {
        t.ok(w.doctor, H::addChargeCall { patientId: p, code: code("L"), category: *cat, quantity: *q, unitPrice: *price });
        totals[*cat as usize] += billing::charge_amount(*q, *price);
    }
    if let Some(pol) = policy {
        t.ok(w.insurer, H::setPolicyCall {
            patientId: p,
            coverageBps: pol.coverage_bps,
            deductible: pol.deductible,
            cap: pol.cap,
            coveredCategories: pol.covered_categories,
        });
    }
    let admitted = t.ok(w.stranger, H::getPatientCall { patientId: p }).admittedAt;
    // Block times only move forward: a case's stay must outlast its setup calls.
    assert!(admitted + stay >= t.time, "stay of {stay} s is shorter than the case's setup");
    t.time = admitted + stay;
    let out = t.ok_logs(w.hub, H::dischargeCall { patientId: p });
    let ev = H::PatientDischarged::decode_raw_log(out.logs[0].0.iter().copied(), &out.logs[0].1).unwrap();
    let bill = t.ok(w.stranger, H::getBillCall { patientId: p });
    assert_eq!((ev.total, ev.covered, ev.due, ev.bedDays), (bill.total, bill.covered, bill.due, bill.bedDays));
    let pat = t.ok(w.stranger, H::getPatientCall { patientId: p });
    assert_eq!(pat.dischargedAt, admitted + stay);
    let want = billing::compute_bill(&billing::BillInput {
        admitted_at: admitted,
        discharged_at: admitted + stay,
        daily_rate: rate,
        category_totals: totals,
        policy,
    });
    (bill, want)
}

#[test]
fn test_billing_edge_cases_match_the_shared_rule() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let full = |bps, ded, cap, cats| Some(billing::Policy { coverage_bps: bps, deductible: ded, cap, covered_categories: cats });
    let cases: Vec<(u64, Vec<(u8, u32, u64)>, Option<billing::Policy>, u64)> = vec![
        (30_000, vec![(1, 2, 7_500)], None, 3 * DAY),                        // no policy
        (30_000, vec![(1, 1, 100)], full(8_000, 10_000_000, u64::MAX, 0xff), DAY), // deductible above total
        (30_000, vec![(2, 4, 250_000)], full(9_000, 0, 50_000, 0xff), DAY),   // cap binds
        (30_000, vec![(3, 5, 1_000), (5, 1, 9_000)], full(10_000, 0, u64::MAX, 0b1), 2 * DAY), // uncovered categories
        (30_000, vec![], full(5_000, 0, u64::MAX, 0xff), 60),                 // stay under a day: one bed day
        (30_000, vec![], full(5_000, 0, u64::MAX, 0xff), DAY),                // exactly one day: one bed day
        (30_000, vec![], full(5_000, 0, u64::MAX, 0xff), DAY + 1),            // a second over: two bed days
        (12_345, vec![(0, 1, 1)], full(3_333, 7, u64::MAX, 0b1), 2 * DAY + 1), // rounds up to 3 days
        (u64::MAX, vec![(7, u32::MAX, u64::MAX), (6, u32::MAX, u64::MAX)], full(10_000, 0, u64::MAX, 0xff), 40 * DAY), // type limits
    ];
    for (i, (rate, charges, pol, stay)) in cases.into_iter().enumerate() {
        let (got, want) = bill_case(&mut t, 0x40 + i as u8, rate, &charges, pol, stay);
        assert_eq!((got.total, got.covered, got.due, got.bedDays), (want.total, want.covered, want.due, want.bed_days), "case {i}");
        assert_eq!(got.total, got.covered + got.due);
    }
}

#[test]
fn test_bill_records_billing_rules_version() {
    let mut t = Twin::new();
    grant_all(&mut t);
    t.ok(t.who.admin, H::setBillingRulesCall { cid: "bafkrules".into() });
    let (got, _) = bill_case(&mut t, 0x60, 100, &[], None, DAY);
    assert_eq!(got.rulesVersion, 1);
}

#[test]
fn test_anchoring_and_proofs() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let dev = device(&mut t, "A-1", "ward-a", true);
    let readings: Vec<Reading> = (1..=37).map(|s| reading(&dev, s)).collect();
    let tree = StandardTree::new(readings.iter().map(reading_leaf)).unwrap();
    for r in readings.iter().take(3) {
        assert_eq!(t.ok(w.stranger, H::readingLeafCall { reading: r.clone().into() }), reading_leaf(r));
    }
    let id = ids::batch_id(w.hub, 7);
    assert_eq!(t.ok(w.stranger, H::batchIdOfCall { hub: w.hub, seq: 7 }), id);
    t.fails(w.hub, H::anchorBatchCall { seq: 7, root: B256::ZERO, leafCount: 37 }, H::EmptyBatch {});
    t.fails(w.hub, H::anchorBatchCall { seq: 7, root: tree.root(), leafCount: 0 }, H::EmptyBatch {});
    assert_eq!(t.ok(w.stranger, H::batchRootCall { batchId: id }), B256::ZERO);
    let at = t.time;
    let out = t.call(w.hub, &H::anchorBatchCall { seq: 7, root: tree.root(), leafCount: 37 });
    assert!(out.success);
    assert_eq!(B256::from_slice(&out.data), id);
    // Storage holds the root; the event carries the rest of the batch.
    let ev = H::BatchAnchored::decode_raw_log(out.logs[0].0.iter().copied(), &out.logs[0].1).unwrap();
    assert_eq!((ev.batchId, ev.hub, ev.seq, ev.root, ev.leafCount, ev.anchoredAt), (id, w.hub, 7, tree.root(), 37, at));
    t.fails(w.hub, H::anchorBatchCall { seq: 7, root: tree.root(), leafCount: 37 }, H::BatchAlreadyAnchored { batchId: id });
    t.fails(w.hub, H::anchorBatchCall { seq: 7, root: B256::repeat_byte(9), leafCount: 1 }, H::BatchAlreadyAnchored { batchId: id });
    // Another hub's seq 7 is its own batch.
    t.ok(w.hub2, H::anchorBatchCall { seq: 7, root: tree.root(), leafCount: 37 });
    assert_eq!(t.ok(w.stranger, H::batchRootCall { batchId: id }), tree.root());

    for (i, (leaf, proof)) in tree.proofs().enumerate().step_by(5) {
        assert!(t.ok(w.stranger, H::verifyReadingCall { batchId: id, leaf, proof: proof.clone() }), "leaf {i}");
        let mut bad = leaf;
        bad.0[0] ^= 1;
        assert!(!t.ok(w.stranger, H::verifyReadingCall { batchId: id, leaf: bad, proof: proof.clone() }));
        if !proof.is_empty() {
            let mut badp = proof.clone();
            badp[0].0[31] ^= 1;
            assert!(!t.ok(w.stranger, H::verifyReadingCall { batchId: id, leaf, proof: badp }));
        }
    }
    let (leaf, proof) = tree.proofs().next().unwrap();
    assert!(!t.ok(w.stranger, H::verifyReadingCall { batchId: B256::repeat_byte(1), leaf, proof }));
}

#[test]
fn test_readings_mode_signatures_and_sequences() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let dev = device(&mut t, "R-1", "ward-r", true);
    let other = device(&mut t, "R-2", "ward-r", true);
    let domain = eip712::domain_separator(CHAIN_ID, t.evm.address);
    assert_eq!(t.ok(w.stranger, H::DOMAIN_SEPARATORCall {}), domain);
    let r1 = reading(&dev, 1);
    assert_eq!(t.ok(w.stranger, H::readingDigestCall { reading: r1.clone().into() }), eip712::reading_digest(domain, &r1));

    let batch: Vec<Reading> = (1..=5).map(|s| reading(&dev, s)).collect();
    let sigs: Vec<Bytes> = batch.iter().map(|r| sign(&dev, &t, r)).collect();
    t.fails(w.hub, H::postReadingsCall { readings: batch.iter().cloned().map(Into::into).collect(), signatures: sigs[..4].to_vec() }, H::LengthMismatch { readings: U256::from(5), signatures: U256::from(4) });
    let out = t.ok_logs(w.hub, H::postReadingsCall { readings: batch.iter().cloned().map(Into::into).collect(), signatures: sigs.clone() });
    assert_eq!(out.logs.len(), 5);
    assert!(out.logs.iter().all(|l| l.0[0] == H::ReadingPosted::SIGNATURE_HASH));
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).lastSeq, 5);

    // Replay: stale sequence.
    t.fails(w.hub, H::postReadingsCall { readings: vec![batch[4].clone().into()], signatures: vec![sigs[4].clone()] }, H::StaleSequence { deviceId: dev.id, seq: 5, lastSeq: 5 });
    // Signed by another device's key.
    let r6 = reading(&dev, 6);
    let wrong = sign(&other, &t, &r6);
    t.fails(w.hub, H::postReadingsCall { readings: vec![r6.clone().into()], signatures: vec![wrong] }, H::InvalidSignature { deviceId: dev.id, seq: 6 });
    // Tampered reading.
    let good6 = sign(&dev, &t, &r6);
    let mut tampered = r6.clone();
    tampered.spo2 = 80;
    t.fails(w.hub, H::postReadingsCall { readings: vec![tampered.into()], signatures: vec![good6.clone()] }, H::InvalidSignature { deviceId: dev.id, seq: 6 });
    // Malformed signatures: short, bad v, high s.
    t.fails(w.hub, H::postReadingsCall { readings: vec![r6.clone().into()], signatures: vec![good6.slice(..64)] }, H::InvalidSignature { deviceId: dev.id, seq: 6 });
    let mut bad_v = good6.to_vec();
    bad_v[64] = 1;
    t.fails(w.hub, H::postReadingsCall { readings: vec![r6.clone().into()], signatures: vec![bad_v.into()] }, H::InvalidSignature { deviceId: dev.id, seq: 6 });
    let n = U256::from_str_radix("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", 16).unwrap();
    let s = U256::from_be_slice(&good6[32..64]);
    let mut high = good6.to_vec();
    high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high[64] = if good6[64] == 27 { 28 } else { 27 };
    t.fails(w.hub, H::postReadingsCall { readings: vec![r6.clone().into()], signatures: vec![high.into()] }, H::InvalidSignature { deviceId: dev.id, seq: 6 });
    // A failure later in the batch rolls back the earlier readings.
    let r7 = reading(&dev, 7);
    let s7 = sign(&dev, &t, &r7);
    t.fails(w.hub, H::postReadingsCall { readings: vec![r6.clone().into(), r7.clone().into(), r7.clone().into()], signatures: vec![good6.clone(), s7.clone(), s7.clone()] }, H::StaleSequence { deviceId: dev.id, seq: 7, lastSeq: 7 });
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).lastSeq, 5);
    t.ok(w.hub, H::postReadingsCall { readings: vec![r6.into(), r7.into()], signatures: vec![good6, s7] });
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: dev.id }).lastSeq, 7);

    // Unknown and revoked devices.
    let ghost = Device { id: ids::device_id("ghost"), key: PrivateKeySigner::random() };
    let rg = reading(&ghost, 1);
    let sg = sign(&ghost, &t, &rg);
    t.fails(w.hub, H::postReadingsCall { readings: vec![rg.into()], signatures: vec![sg] }, H::UnknownDevice { deviceId: ghost.id });
    t.ok(w.admin, H::revokeDeviceCall { deviceId: other.id });
    let ro = reading(&other, 1);
    let so = sign(&other, &t, &ro);
    t.fails(w.hub, H::postReadingsCall { readings: vec![ro.into()], signatures: vec![so] }, H::InvalidDeviceStatus { deviceId: other.id, status: 3 });
}

/// Issue 22: an anchor writes one storage slot (the root), so a batch of
/// 2,000 readings costs at most 30 gas a reading with the transaction's
/// intrinsic and calldata gas included: anvil's receipt for the EVM edition,
/// the metered WASM plus the same intrinsic gas for the Stylus edition.
/// (Storing hub, seq, leaf count and time as well cost 48.2 a reading.)
#[test]
fn test_an_anchor_stores_one_slot_and_costs_under_30_gas_a_reading_at_2000() {
    use healthsense_tests::evm::intrinsic_gas;
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    const LEAVES: u64 = 2_000;
    for seq in 1..=3u64 {
        let call = H::anchorBatchCall { seq, root: B256::repeat_byte(seq as u8), leafCount: LEAVES as u32 };
        let before = t.wasm.storage();
        t.ok(w.hub, call.clone());
        let after = t.wasm.storage();
        let new: Vec<_> = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).collect();
        assert_eq!(new.len(), 1, "batch {seq} wrote {} slots: {new:?}", new.len());
        assert_eq!(*new[0].1, B256::repeat_byte(seq as u8), "the slot written is the root");

        let intrinsic = intrinsic_gas(&call.abi_encode());
        let evm = t.evm.last_gas.expect("anvil mined the anchor") + intrinsic;
        let stylus = t.wasm.last_cost().expect("the WASM engine ran the anchor").gas + intrinsic;
        for (edition, gas) in [("EVM (anvil receipt)", evm), ("Stylus (host + intrinsic)", stylus)] {
            assert!(gas <= 30 * LEAVES, "{edition}: anchorBatch of {LEAVES} leaves cost {gas} gas, {:.1} a reading (limit 30)", gas as f64 / LEAVES as f64);
        }
    }
}

/// A selector neither program routes: the main program's fallback hands it
/// to the records program, which reverts with empty data, as the EVM
/// edition's missing fallback does; with or without arguments, as a
/// transaction or a view.
#[test]
fn test_a_selector_neither_program_routes_reverts_with_empty_data() {
    let mut t = Twin::new();
    let w = t.who;
    for (calldata, view) in [
        (vec![0xde, 0xad, 0xbe, 0xef], false),
        ([vec![0x12, 0x34, 0x56, 0x78], vec![7u8; 64]].concat(), false),
        (vec![0xde, 0xad, 0xbe, 0xef], true),
        (vec![0x01], false),
    ] {
        let out = t.call_raw("unrouted selector", w.admin, &calldata, view);
        assert!(!out.success && out.data.is_empty() && out.logs.is_empty());
    }
}

/// The records program at its own address sees only its own (empty)
/// storage: nobody holds a role there, so every state change reverts, views
/// read zeros, and nothing of the main contract changes.
#[test]
fn test_the_records_program_called_directly_changes_nothing_of_the_main_contract() {
    use healthsense_tests::stylus::RECORDS_PROGRAM;
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    t.ok(w.admin, H::setBillingRulesCall { cid: "bafkrules".into() });
    let main_before = t.wasm.storage();
    let records_before = t.wasm.world_mut().storage(RECORDS_PROGRAM);
    let time = t.time;
    let direct = |t: &mut Twin, from: Address, data: Vec<u8>, view: bool| t.wasm.call_at(RECORDS_PROGRAM, from, &data, view, time);

    let out = direct(&mut t, w.admin, H::setBillingRulesCall { cid: "bafkevil".into() }.abi_encode(), false);
    assert!(!out.success);
    assert_eq!(out.data.as_ref(), unauthorized(w.admin, ids::ADMIN_ROLE).abi_encode().as_slice());
    let out = direct(&mut t, w.hub, H::postReadingsCall { readings: vec![], signatures: vec![] }.abi_encode(), false);
    assert_eq!(out.data.as_ref(), unauthorized(w.hub, ids::HUB_ROLE).abi_encode().as_slice());
    let out = direct(&mut t, w.hub, H::setArchiveCall { patientId: B256::repeat_byte(1), cid: "x".into(), recordHash: B256::ZERO }.abi_encode(), false);
    assert_eq!(out.data.as_ref(), unauthorized(w.hub, ids::HUB_ROLE).abi_encode().as_slice());
    let out = direct(&mut t, w.stranger, H::billingRulesCall {}.abi_encode(), true);
    let rules = H::billingRulesCall::abi_decode_returns(&out.data).expect("billingRules decodes");
    assert_eq!((rules.cid.as_str(), rules.version), ("", 0));
    // Its EIP-712 domain is its own address's, not the contract's.
    let out = direct(&mut t, w.stranger, H::DOMAIN_SEPARATORCall {}.abi_encode(), true);
    assert_eq!(B256::from_slice(&out.data), eip712::domain_separator(CHAIN_ID, RECORDS_PROGRAM));
    // A main-program selector is not routed there at all.
    let out = direct(&mut t, w.admin, H::pauseCall {}.abi_encode(), false);
    assert!(!out.success && out.data.is_empty());

    assert_eq!(t.wasm.storage(), main_before);
    assert_eq!(t.wasm.world_mut().storage(RECORDS_PROGRAM), records_before);
    let r = t.ok(w.stranger, H::billingRulesCall {});
    assert_eq!((r.cid.as_str(), r.version), ("bafkrules", 1));
}

/// The suite runs the artifacts it is given: with the two programs swapped
/// in a copy of the artifact directory (what `HEALTHSENSE_STYLUS_DIR` would
/// point at), the first calls already diverge from the other engines.
#[test]
fn test_swapped_artifacts_make_the_suite_fail() {
    use healthsense_stylus_host::{Artifacts, MAIN_FILE, RECORDS_FILE};
    let real = healthsense_tests::wasm::artifacts();
    let dir = std::env::temp_dir().join(format!("hs-swapped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(real.dir.join(MAIN_FILE), dir.join(RECORDS_FILE)).unwrap();
    std::fs::copy(real.dir.join(RECORDS_FILE), dir.join(MAIN_FILE)).unwrap();
    let swapped = Artifacts::load(&dir).expect("both swapped programs still load");
    let _ = std::fs::remove_dir_all(&dir);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut t = Twin::with_artifacts(&swapped);
        grant_all(&mut t);
        let _ = device(&mut t, "SW-1", "w", true);
    }));
    assert!(run.is_err(), "the suite passed on swapped programs: it is not running the artifacts it is given");
}

/// One `postReadings` batch signed by two devices' keys: every signature is
/// recovered by its own `ecrecover` call. (Regression: the fuzzer found that
/// TestVM answered every mocked precompile call of a transaction with the
/// last registered answer, so mixed-signer batches diverged; the harness now
/// answers each call natively.) Also a batch whose second signer is wrong
/// reverts naming that reading.
#[test]
fn test_a_batch_signed_by_several_devices_recovers_each_signer() {
    let mut t = Twin::new();
    grant_all(&mut t);
    let w = t.who;
    let a = device(&mut t, "MX-1", "ward-m", true);
    let b = device(&mut t, "MX-2", "ward-m", true);
    let batch = [reading(&a, 1), reading(&b, 1), reading(&a, 2), reading(&b, 2)];
    let sigs: Vec<Bytes> = batch.iter().zip([&a, &b, &a, &b]).map(|(r, d)| sign(d, &t, r)).collect();
    let out = t.ok_logs(w.hub, H::postReadingsCall { readings: batch.iter().cloned().map(Into::into).collect(), signatures: sigs });
    assert_eq!(out.logs.len(), 4);
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: a.id }).lastSeq, 2);
    assert_eq!(t.ok(w.stranger, H::getDeviceCall { deviceId: b.id }).lastSeq, 2);

    let next = [reading(&a, 3), reading(&b, 3)];
    let crossed = vec![sign(&a, &t, &next[0]), sign(&a, &t, &next[1])];
    t.fails(
        w.hub,
        H::postReadingsCall { readings: next.iter().cloned().map(Into::into).collect(), signatures: crossed },
        H::InvalidSignature { deviceId: b.id, seq: 3 },
    );
}

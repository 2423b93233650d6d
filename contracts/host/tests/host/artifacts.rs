//! The shipped HealthSense programs on the host: constructor, a write that
//! the main program handles, one that goes through its delegate call into
//! the records program, a view, and a selector neither program routes.
//! Needs `scripts/build-wasm` first (as `scripts/test` does).

use alloy_primitives::{Address, B256};
use alloy_sol_types::{sol, SolCall, SolValue};
use healthsense_abi::rules::ids;
use healthsense_stylus_host::{Artifacts, Tx, World};
use stylus_sdk::abi::CONSTRUCTOR_SELECTOR;

sol! {
    function hasRole(bytes32 role, address account) external view returns (bool);
    function setTariff(bytes32 ward, uint64 dailyRate) external;
    function setBillingRules(string cid) external;
}

#[test]
fn test_the_shipped_programs_run_on_the_host() {
    let artifacts = Artifacts::load_default().expect("run scripts/build-wasm first");
    let (main, records, admin, other) =
        (Address::repeat_byte(0xc0), Address::repeat_byte(0x5e), Address::repeat_byte(0xad), Address::repeat_byte(0x99));
    let mut world = World::new(31_337);
    world.deploy(main, artifacts.main.clone());
    world.deploy(records, artifacts.records.clone());
    let mut ctor = CONSTRUCTOR_SELECTOR.to_be_bytes().to_vec();
    ctor.extend((admin, records).abi_encode_params());
    let out = world.transact(&Tx::new(admin, main, ctor, 1_000));
    assert!(out.success, "constructor reverted (trap {:?})", out.trap);
    assert_eq!(out.logs.len(), 1, "RoleGranted");
    assert!(out.ink_used > 0);

    let has = |world: &mut World, who: Address| {
        let out = world.simulate(&Tx::new(other, main, hasRoleCall { role: ids::ADMIN_ROLE, account: who }.abi_encode(), 1_001));
        assert!(out.success, "hasRole reverted (trap {:?})", out.trap);
        out.data[31] == 1
    };
    assert!(has(&mut world, admin));
    assert!(!has(&mut world, other));

    // Main program: a write and its event.
    let before = world.storage(main);
    let out = world.transact(&Tx::new(admin, main, setTariffCall { ward: B256::repeat_byte(3), dailyRate: 7 }.abi_encode(), 1_002));
    assert!(out.success && out.logs.len() == 1 && out.logs[0].address == main, "{out:?}");
    assert_ne!(world.storage(main), before);
    // A stranger's write reverts with data and changes nothing.
    let snapshot = world.storage(main);
    let out = world.transact(&Tx::new(other, main, setTariffCall { ward: B256::repeat_byte(4), dailyRate: 7 }.abi_encode(), 1_003));
    assert!(!out.success && !out.data.is_empty() && out.logs.is_empty());
    assert_eq!(world.storage(main), snapshot);

    // Records program, by the main program's delegate call: the write lands
    // in the main contract's storage and the event comes from its address.
    let out = world.transact(&Tx::new(admin, main, setBillingRulesCall { cid: "bafkrules".into() }.abi_encode(), 1_004));
    assert!(out.success, "setBillingRules reverted: {:?} (trap {:?})", out.data, out.trap);
    assert_eq!(out.logs.len(), 1);
    assert_eq!(out.logs[0].address, main);
    assert!(world.storage(records).is_empty());

    // A selector neither program routes.
    let out = world.transact(&Tx::new(admin, main, vec![0xde, 0xad, 0xbe, 0xef], 1_005));
    assert!(!out.success && out.data.is_empty());
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {TestBase} from "./utils/TestBase.sol";
import {HealthSense} from "../HealthSense.sol";
import {IHealthSense} from "../../../abi/IHealthSense.sol";

/// @dev Drives the contract with random admissions, charges, policies,
/// discharges and calls from a stranger, and records what it expects.
contract Handler is TestBase {
    HealthSense public hs;
    address public admin = address(0xA11CE);
    address public hub = address(0x4B);
    address public doctor = address(0xD0C);
    address public insurer = address(0x1A5);
    address public stranger = address(0xBAD);
    bytes32 public ward = keccak256("ward-inv");
    bytes32[] public patients;
    mapping(bytes32 => uint32) public chargesAtDischarge;
    uint256 public strangerSuccesses;
    uint256 public devices;

    constructor() {
        hs = new HealthSense(admin);
        vm.startPrank(admin);
        hs.grantRole(hs.HUB_ROLE(), hub);
        hs.grantRole(hs.DOCTOR_ROLE(), doctor);
        hs.grantRole(hs.INSURER_ROLE(), insurer);
        hs.setTariff(ward, 25_000);
        vm.stopPrank();
    }

    function admit(uint256 salt) external {
        bytes32 d = keccak256(abi.encode("dev", devices));
        bytes32 p = keccak256(abi.encode("stay", devices, salt));
        devices++;
        vm.prank(admin);
        hs.provisionDevice(d, address(uint160(uint256(d))), ward);
        vm.prank(hub);
        hs.activateDevice(d);
        vm.prank(doctor);
        hs.admitPatient(p, d);
        patients.push(p);
    }

    function charge(uint256 i, uint8 category, uint32 quantity, uint64 price) external {
        if (patients.length == 0) return;
        bytes32 p = patients[i % patients.length];
        category = uint8(bound(category, 0, 7));
        quantity = uint32(bound(quantity, 1, 1_000));
        vm.prank(doctor);
        try hs.addCharge(p, "x", category, quantity, price) {} catch {}
    }

    function insure(uint256 i, uint16 bps, uint64 deductible, uint64 cap, uint8 cats) external {
        if (patients.length == 0) return;
        vm.prank(insurer);
        try hs.setPolicy(patients[i % patients.length], uint16(bound(bps, 0, 10_000)), deductible, cap, cats) {} catch {}
    }

    function discharge(uint256 i, uint32 stay) external {
        if (patients.length == 0) return;
        bytes32 p = patients[i % patients.length];
        vm.warp(block.timestamp + bound(stay, 0, 30 days));
        vm.prank(hub);
        try hs.discharge(p) {
            chargesAtDischarge[p] = hs.getPatient(p).chargeCount;
        } catch {}
    }

    /// A stranger tries every state change; any success breaks an invariant.
    function strangerTries(uint256 i, uint8 which) external {
        bytes32 p = patients.length == 0 ? bytes32(0) : patients[i % patients.length];
        vm.startPrank(stranger);
        which = uint8(bound(which, 0, 5));
        bool ok;
        if (which == 0) (ok,) = address(hs).call(abi.encodeCall(hs.addCharge, (p, "s", 1, 1, 1)));
        if (which == 1) (ok,) = address(hs).call(abi.encodeCall(hs.discharge, (p)));
        if (which == 2) (ok,) = address(hs).call(abi.encodeCall(hs.setPolicy, (p, 10_000, 0, type(uint64).max, 0xff)));
        if (which == 3) (ok,) = address(hs).call(abi.encodeCall(hs.grantRole, (hs.ADMIN_ROLE(), stranger)));
        if (which == 4) (ok,) = address(hs).call(abi.encodeCall(hs.anchorBatch, (1, bytes32(uint256(1)), 1)));
        if (which == 5) (ok,) = address(hs).call(abi.encodeCall(hs.setArchive, (p, "cid", bytes32(0))));
        vm.stopPrank();
        if (ok) strangerSuccesses++;
    }

    function patientCount() external view returns (uint256) {
        return patients.length;
    }
}

contract HealthSenseInvariantTest is TestBase {
    Handler internal handler;

    function setUp() public {
        handler = new Handler();
        targetContract(address(handler));
    }

    /// Every discharged bill splits exactly into covered and due, within the cap.
    function invariant_total_is_covered_plus_due() public view {
        HealthSense hs = handler.hs();
        for (uint256 i = 0; i < handler.patientCount(); i++) {
            bytes32 p = handler.patients(i);
            if (hs.getPatient(p).status < 2) continue;
            IHealthSense.BillInfo memory b = hs.getBill(p);
            vm.assertEq(b.total, b.covered + b.due, "total == covered + due");
            vm.assertTrue(b.covered <= hs.getPolicy(p).cap, "covered within cap");
            vm.assertTrue(b.bedDays >= 1, "at least one bed day");
        }
    }

    /// No charge is added after discharge.
    function invariant_no_charge_after_discharge() public view {
        HealthSense hs = handler.hs();
        for (uint256 i = 0; i < handler.patientCount(); i++) {
            bytes32 p = handler.patients(i);
            if (hs.getPatient(p).status < 2) continue;
            vm.assertEq(hs.getPatient(p).chargeCount, handler.chargesAtDischarge(p), "charges frozen");
        }
    }

    /// Only role holders change state: every stranger attempt reverted.
    function invariant_only_role_holders_change_state() public view {
        vm.assertEq(handler.strangerSuccesses(), 0, "a stranger changed state");
        vm.assertFalse(handler.hs().hasRole(handler.hs().ADMIN_ROLE(), handler.stranger()), "stranger is admin");
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {TestBase, Vm} from "./utils/TestBase.sol";
import {HealthSense} from "../HealthSense.sol";
import {IHealthSense} from "../../../abi/IHealthSense.sol";

/// @dev Shared set-up: a deployed contract, the four roles held, one active device.
abstract contract Fixture is TestBase {
    HealthSense internal hs;
    address internal admin = address(0xA11CE);
    address internal hub = address(0x4B);
    address internal doctor = address(0xD0C);
    address internal insurer = address(0x1A5);
    address internal stranger = address(0xBAD);
    uint256 internal deviceKey = 0xDE71CE;
    bytes32 internal ward = keccak256("ward-1");
    bytes32 internal device = keccak256("HS-0001");
    bytes32 internal patient = keccak256("stay-1");
    bytes32 internal ADMIN;
    bytes32 internal HUB;
    bytes32 internal DOCTOR;
    bytes32 internal INSURER;

    function setUp() public virtual {
        hs = new HealthSense(admin);
        ADMIN = hs.ADMIN_ROLE();
        HUB = hs.HUB_ROLE();
        DOCTOR = hs.DOCTOR_ROLE();
        INSURER = hs.INSURER_ROLE();
        vm.startPrank(admin);
        hs.grantRole(HUB, hub);
        hs.grantRole(DOCTOR, doctor);
        hs.grantRole(INSURER, insurer);
        hs.provisionDevice(device, vm.addr(deviceKey), ward);
        hs.setTariff(ward, 30_000);
        vm.stopPrank();
        vm.prank(hub);
        hs.activateDevice(device);
        vm.warp(1_000_000);
    }

    function admit() internal {
        vm.prank(doctor);
        hs.admitPatient(patient, device);
    }

    function unauthorized(address who, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IHealthSense.AccessControlUnauthorizedAccount.selector, who, role);
    }

    function reading(uint64 seq) internal view returns (IHealthSense.Reading memory r) {
        r = IHealthSense.Reading(device, seq, 1_764_000_000_000 + seq, 72, 16, 97, 120, 80, 3_700, 1);
    }

    function sign(uint256 key, IHealthSense.Reading memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, hs.readingDigest(r));
        return abi.encodePacked(rr, s, v);
    }

    /// @dev Sorted-pair hash, as OpenZeppelin's MerkleProof.
    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }
}

contract HealthSenseTest is Fixture {
    // ------------------------------------------------------------- roles
    function test_constructor_grants_admin_and_rejects_zero() public {
        vm.assertTrue(hs.hasRole(ADMIN, admin), "admin");
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.ZeroAddress.selector));
        new HealthSense(address(0));
    }

    function test_role_ids_are_keccak_of_names() public view {
        vm.assertEq(ADMIN, keccak256("ADMIN_ROLE"), "admin");
        vm.assertEq(HUB, keccak256("HUB_ROLE"), "hub");
        vm.assertEq(DOCTOR, keccak256("DOCTOR_ROLE"), "doctor");
        vm.assertEq(INSURER, keccak256("INSURER_ROLE"), "insurer");
    }

    function test_grant_revoke_and_last_admin() public {
        vm.startPrank(admin);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.UnknownRole.selector, bytes32(uint256(1))));
        hs.grantRole(bytes32(uint256(1)), stranger);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.LastAdmin.selector));
        hs.revokeRole(ADMIN, admin);
        hs.grantRole(ADMIN, stranger);
        hs.revokeRole(ADMIN, admin);
        vm.stopPrank();
        vm.assertFalse(hs.hasRole(ADMIN, admin), "revoked");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.LastAdmin.selector));
        hs.renounceRole(ADMIN, stranger);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.AccessControlBadConfirmation.selector));
        hs.renounceRole(ADMIN, admin);
    }

    function test_grant_existing_role_emits_nothing() public {
        vm.recordLogs();
        vm.prank(admin);
        hs.grantRole(HUB, hub);
        vm.assertEq(vm.getRecordedLogs().length, 0, "no event for a no-op grant");
    }

    /// Each state-changing function from each role that may not call it.
    function test_role_matrix_rejects_every_other_role() public {
        address[5] memory who = [admin, hub, doctor, insurer, stranger];
        for (uint256 i = 0; i < who.length; i++) {
            address a = who[i];
            vm.startPrank(a);
            if (a != admin) {
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.provisionDevice(keccak256("x"), a, ward);
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.revokeDevice(device);
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.setTariff(ward, 1);
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.setBillingRules("cid");
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.pause();
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.unpause();
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.grantRole(HUB, a);
                vm.expectRevert(unauthorized(a, ADMIN));
                hs.revokeRole(HUB, hub);
            }
            if (a != hub) {
                vm.expectRevert(unauthorized(a, HUB));
                hs.activateDevice(device);
                vm.expectRevert(unauthorized(a, HUB));
                hs.anchorBatch(1, bytes32(uint256(1)), 1);
                vm.expectRevert(unauthorized(a, HUB));
                hs.setArchive(patient, "cid", bytes32(0));
                vm.expectRevert(unauthorized(a, HUB));
                hs.postReadings(new IHealthSense.Reading[](0), new bytes[](0));
            }
            if (a != doctor) {
                vm.expectRevert(unauthorized(a, DOCTOR));
                hs.admitPatient(patient, device);
                vm.expectRevert(unauthorized(a, DOCTOR));
                hs.addCharge(patient, "c", 1, 1, 1);
            }
            if (a != doctor && a != hub) {
                vm.expectRevert(unauthorized(a, DOCTOR));
                hs.discharge(patient);
            }
            if (a != insurer) {
                vm.expectRevert(unauthorized(a, INSURER));
                hs.setPolicy(patient, 1, 0, 0, 0);
            }
            vm.stopPrank();
        }
    }

    function test_pause_blocks_changes_but_not_roles() public {
        vm.prank(admin);
        hs.pause();
        vm.prank(doctor);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.EnforcedPause.selector));
        hs.admitPatient(patient, device);
        vm.startPrank(admin);
        hs.revokeRole(HUB, hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.EnforcedPause.selector));
        hs.pause();
        hs.unpause();
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.ExpectedPause.selector));
        hs.unpause();
        vm.stopPrank();
        admit();
    }

    // ----------------------------------------------------------- devices
    function test_device_lifecycle() public {
        bytes32 d = keccak256("HS-2");
        vm.startPrank(admin);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.ZeroAddress.selector));
        hs.provisionDevice(d, address(0), ward);
        hs.provisionDevice(d, address(7), ward);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.DeviceAlreadyExists.selector, d));
        hs.provisionDevice(d, address(7), ward);
        hs.revokeDevice(d);
        vm.stopPrank();
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidDeviceStatus.selector, d, uint8(3)));
        hs.activateDevice(d);
        vm.prank(doctor);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidDeviceStatus.selector, d, uint8(3)));
        hs.admitPatient(patient, d);
        vm.assertEq(hs.getDevice(d).status, 3, "revoked");
    }

    // ------------------------------------------- admission and billing
    function test_status_transitions() public {
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.UnknownPatient.selector, patient));
        hs.setArchive(patient, "cid", bytes32(0));
        admit();
        vm.prank(doctor);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.DeviceInUse.selector, device, patient));
        hs.admitPatient(keccak256("other"), device);
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidPatientStatus.selector, patient, uint8(1)));
        hs.setArchive(patient, "cid", bytes32(0));
        vm.prank(doctor);
        hs.discharge(patient);
        vm.prank(doctor);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidPatientStatus.selector, patient, uint8(2)));
        hs.addCharge(patient, "c", 1, 1, 1);
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidPatientStatus.selector, patient, uint8(2)));
        hs.discharge(patient);
        vm.prank(hub);
        hs.setArchive(patient, "bafkrei", bytes32(uint256(5)));
        vm.assertEq(hs.getPatient(patient).status, 3, "archived");
        vm.assertEq(hs.getDevice(device).patientId, bytes32(0), "device freed");
    }

    /// Issue 20: no stay starts in a ward without a bed rate, and no rate is zero.
    function test_admission_to_a_ward_without_a_tariff_is_refused() public {
        bytes32 w = keccak256("ward-new");
        bytes32 d = keccak256("HS-N");
        vm.prank(admin);
        hs.provisionDevice(d, address(7), w);
        vm.prank(hub);
        hs.activateDevice(d);
        vm.prank(doctor);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.WardHasNoTariff.selector, w));
        hs.admitPatient(patient, d);
        vm.assertEq(hs.getPatient(patient).status, 0, "not admitted");
        vm.assertEq(hs.getDevice(d).patientId, bytes32(0), "device still free");
        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.ZeroTariff.selector, w));
        hs.setTariff(w, 0);
        vm.prank(admin);
        hs.setTariff(w, 1);
        vm.prank(doctor);
        hs.admitPatient(patient, d);
        vm.assertEq(hs.getPatient(patient).status, 1, "admitted once priced");
    }

    function test_bill_with_policy_cap_and_rounding() public {
        admit();
        vm.startPrank(doctor);
        hs.addCharge(patient, "99213", 1, 2, 7_500);
        hs.addCharge(patient, "J1100", 3, 4, 1_250);
        vm.stopPrank();
        vm.prank(insurer);
        hs.setPolicy(patient, 8_000, 1_000, 50_000, 3); // bed and consultation
        vm.prank(address(0x5EC));
        vm.expectRevert(unauthorized(address(0x5EC), INSURER));
        hs.setPolicy(patient, 1, 0, 0, 0);
        vm.warp(block.timestamp + 2 days + 1);
        vm.prank(hub);
        hs.discharge(patient);
        IHealthSense.BillInfo memory b = hs.getBill(patient);
        vm.assertEq(b.bedDays, 3, "2 days + 1 s is 3 bed days");
        vm.assertEq(b.total, 3 * 30_000 + 15_000 + 5_000, "total");
        // eligible = bed 90_000 + consultation 15_000; 80% of 104_000 = 83_200, capped at 50_000.
        vm.assertEq(b.covered, 50_000, "cap binds");
        vm.assertEq(b.due, b.total - b.covered, "due");
    }

    // --------------------------------------------------------- anchoring
    function test_anchor_and_verify_four_leaf_tree() public {
        bytes32[4] memory l;
        for (uint64 i = 0; i < 4; i++) l[i] = hs.readingLeaf(reading(i + 1));
        bytes32 n01 = hashPair(l[0], l[1]);
        bytes32 n23 = hashPair(l[2], l[3]);
        bytes32 root = hashPair(n01, n23);
        vm.prank(hub);
        bytes32 id = hs.anchorBatch(9, root, 4);
        vm.assertEq(id, keccak256(abi.encode(hub, uint64(9))), "batch id rule");
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.BatchAlreadyAnchored.selector, id));
        hs.anchorBatch(9, root, 4);
        bytes32[] memory proof = new bytes32[](2);
        proof[0] = l[1];
        proof[1] = n23;
        vm.assertTrue(hs.verifyReading(id, l[0], proof), "valid proof");
        vm.assertFalse(hs.verifyReading(id, l[2], proof), "wrong leaf");
        proof[1] = n01;
        vm.assertFalse(hs.verifyReading(id, l[0], proof), "altered proof");
    }

    /// Issue 22: an anchor writes one storage slot, the root; hub, seq, leaf
    /// count and time are in the event.
    function test_anchor_stores_the_root_alone_and_the_rest_in_the_event() public {
        bytes32 root = keccak256("root");
        bytes32 id = hs.batchIdOf(hub, 5);
        vm.assertEq(hs.batchRoot(id), bytes32(0), "no root before");
        vm.record();
        vm.recordLogs();
        vm.prank(hub);
        hs.anchorBatch(5, root, 2_000);
        (, bytes32[] memory writes) = vm.accesses(address(hs));
        vm.assertEq(writes.length, 1, "one slot written");
        vm.assertEq(hs.batchRoot(id), root, "the root is stored");
        Vm.Log[] memory logs = vm.getRecordedLogs();
        vm.assertEq(logs.length, 1, "one event");
        vm.assertEq(logs[0].topics[1], id, "batch id topic");
        vm.assertEq(logs[0].topics[2], bytes32(uint256(uint160(hub))), "hub topic");
        (uint64 seq, bytes32 r, uint32 leaves, uint64 at) = abi.decode(logs[0].data, (uint64, bytes32, uint32, uint64));
        vm.assertEq(seq, 5, "seq");
        vm.assertEq(r, root, "root");
        vm.assertEq(leaves, 2_000, "leaf count");
        vm.assertEq(at, block.timestamp, "anchoring time");
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.BatchAlreadyAnchored.selector, id));
        hs.anchorBatch(5, keccak256("other root"), 1);
    }

    // ------------------------------------------------------ readings mode
    function test_post_signed_readings_and_reject_replays() public {
        IHealthSense.Reading[] memory rs = new IHealthSense.Reading[](2);
        bytes[] memory sigs = new bytes[](2);
        rs[0] = reading(1);
        rs[1] = reading(2);
        sigs[0] = sign(deviceKey, rs[0]);
        sigs[1] = sign(deviceKey, rs[1]);
        vm.prank(hub);
        hs.postReadings(rs, sigs);
        vm.assertEq(hs.getDevice(device).lastSeq, 2, "last seq");
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.StaleSequence.selector, device, uint64(1), uint64(2)));
        hs.postReadings(rs, sigs);
        IHealthSense.Reading[] memory one = new IHealthSense.Reading[](1);
        bytes[] memory bad = new bytes[](1);
        one[0] = reading(3);
        bad[0] = sign(0xBEEF, one[0]);
        vm.prank(hub);
        vm.expectRevert(abi.encodeWithSelector(IHealthSense.InvalidSignature.selector, device, uint64(3)));
        hs.postReadings(one, bad);
    }
}

/// Fuzz tests against references written independently of the contract.
contract HealthSenseFuzzTest is Fixture {
    function testFuzz_bill_matches_reference(
        uint64 rate,
        uint32 q1,
        uint64 p1,
        uint32 q2,
        uint64 p2,
        uint16 bps,
        uint64 deductible,
        uint64 cap,
        uint8 cats,
        uint32 stay
    ) public {
        rate = uint64(bound(rate, 1, type(uint64).max));
        bps = uint16(bound(bps, 0, 10_000));
        q1 = uint32(bound(q1, 1, type(uint32).max));
        q2 = uint32(bound(q2, 1, type(uint32).max));
        vm.prank(admin);
        hs.setTariff(ward, rate);
        admit();
        uint256 t0 = block.timestamp;
        vm.startPrank(doctor);
        hs.addCharge(patient, "a", 2, q1, p1);
        hs.addCharge(patient, "b", 5, q2, p2);
        vm.stopPrank();
        vm.prank(insurer);
        hs.setPolicy(patient, bps, deductible, cap, cats);
        vm.warp(t0 + stay);
        vm.prank(hub);
        hs.discharge(patient);

        // Reference: per-category sums, started days, floor division.
        uint256 days_ = stay == 0 ? 1 : (uint256(stay) + 86_399) / 86_400;
        uint256[3] memory parts = [days_ * rate, uint256(q1) * p1, uint256(q2) * p2];
        uint8[3] memory catOf = [0, 2, 5];
        uint256 total;
        uint256 eligible;
        for (uint256 i = 0; i < 3; i++) {
            total += parts[i];
            if (cats & (uint8(1) << catOf[i]) != 0) eligible += parts[i];
        }
        uint256 covered = eligible > deductible ? (eligible - deductible) * bps / 10_000 : 0;
        if (covered > cap) covered = cap;
        IHealthSense.BillInfo memory b = hs.getBill(patient);
        vm.assertEq(b.bedDays, days_, "bed days");
        vm.assertEq(b.total, total, "total");
        vm.assertEq(b.covered, covered, "covered");
        vm.assertEq(b.total, b.covered + b.due, "total = covered + due");
    }

    function testFuzz_merkle_proofs(bytes32 seed, uint8 n) public {
        uint256 size = bound(n, 1, 16);
        // Leaves, then a bottom-up tree with sorted-pair hashing; the odd
        // node is carried up, which MerkleProof.verify accepts too.
        bytes32[] memory level = new bytes32[](size);
        for (uint256 i = 0; i < size; i++) level[i] = keccak256(abi.encode(seed, i));
        bytes32 target = level[0];
        bytes32[] memory proof = new bytes32[](8);
        uint256 plen;
        uint256 pos;
        while (level.length > 1) {
            bytes32[] memory next = new bytes32[]((level.length + 1) / 2);
            for (uint256 i = 0; i < next.length; i++) {
                uint256 a = 2 * i;
                next[i] = a + 1 < level.length ? hashPair(level[a], level[a + 1]) : level[a];
            }
            uint256 sib = pos ^ 1;
            if (sib < level.length) proof[plen++] = level[sib];
            pos /= 2;
            level = next;
        }
        bytes32[] memory p = new bytes32[](plen);
        for (uint256 i = 0; i < plen; i++) p[i] = proof[i];
        vm.prank(hub);
        bytes32 id = hs.anchorBatch(1, level[0], uint32(size));
        vm.assertTrue(hs.verifyReading(id, target, p), "proof verifies");
        vm.assertFalse(hs.verifyReading(id, target ^ bytes32(uint256(1)), p), "altered leaf fails");
    }
}

// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IHealthSense} from "../../abi/IHealthSense.sol";

/// @title HealthSense, EVM edition
/// @notice Device registration, patient stays, Merkle-anchored or signed
/// on-chain vitals, charges, insurance and discharge billing, and archive CIDs.
/// @dev Same ABI and behaviour as the Stylus edition (contracts/src); the
/// semantics, including the check order that makes revert data identical,
/// are in docs/CONTRACT.md. The conformance suite compares the two editions
/// call by call.
contract HealthSense is IHealthSense {
    // ---------------------------------------------------------------- roles
    bytes32 internal constant ADMIN = keccak256("ADMIN_ROLE");
    bytes32 internal constant HUB = keccak256("HUB_ROLE");
    bytes32 internal constant DOCTOR = keccak256("DOCTOR_ROLE");
    bytes32 internal constant INSURER = keccak256("INSURER_ROLE");

    uint8 internal constant DEVICE_PENDING = 1;
    uint8 internal constant DEVICE_ACTIVE = 2;
    uint8 internal constant DEVICE_REVOKED = 3;
    uint8 internal constant PATIENT_ADMITTED = 1;
    uint8 internal constant PATIENT_DISCHARGED = 2;
    uint8 internal constant PATIENT_ARCHIVED = 3;
    uint8 internal constant CATEGORY_COUNT = 8;
    uint256 internal constant DAY = 86400;
    uint256 internal constant BPS = 10000;
    /// @dev secp256k1n / 2: signatures with a larger s are rejected (EIP-2).
    uint256 internal constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant READING_TYPEHASH = keccak256(
        "Reading(bytes32 deviceId,uint64 seq,uint64 timestamp,uint16 heartRate,uint16 respRate,uint16 spo2,uint16 systolic,uint16 diastolic,uint16 temperature,uint8 consciousness)"
    );

    // -------------------------------------------------------------- storage
    struct Device {
        address signer;
        uint8 status;
        uint64 lastSeq;
        bytes32 ward;
        bytes32 patientId;
    }

    struct Charge {
        bytes32 code;
        uint8 category;
        uint32 quantity;
        uint64 unitPrice;
        address doctor;
    }

    struct Policy {
        address insurer;
        uint16 coverageBps;
        uint64 deductible;
        uint64 cap;
        uint8 coveredCategories;
    }

    struct Bill {
        uint256 total;
        uint256 covered;
        uint256 due;
        uint64 bedDays;
        uint32 rulesVersion;
    }

    struct Patient {
        bytes32 deviceId;
        bytes32 ward;
        uint8 status;
        uint64 admittedAt;
        uint64 dischargedAt;
        Charge[] charges;
        /// @dev Σ quantity × unitPrice per category, so discharge is O(1).
        uint256[8] categoryTotals;
        Policy policy;
        Bill bill;
        string cid;
        bytes32 recordHash;
    }

    mapping(bytes32 role => mapping(address account => bool)) internal _roles;
    uint256 internal _adminCount;
    bool internal _paused;
    mapping(bytes32 => Device) internal _devices;
    mapping(bytes32 => Patient) internal _patients;
    mapping(bytes32 => uint64) internal _tariffs;
    /// @dev Merkle root per batch id: the one slot an anchor writes (the rest is in `BatchAnchored`).
    mapping(bytes32 => bytes32) internal _batchRoots;
    string internal _rulesCid;
    uint32 internal _rulesVersion;

    /// @notice Deploys with `admin` as the first admin.
    constructor(address admin) {
        if (admin == address(0)) revert ZeroAddress();
        _grant(ADMIN, admin);
    }

    // ------------------------------------------------------------ modifiers
    function _checkRole(bytes32 role) internal view {
        if (!_roles[role][msg.sender]) revert AccessControlUnauthorizedAccount(msg.sender, role);
    }

    function _whenNotPaused() internal view {
        if (_paused) revert EnforcedPause();
    }

    modifier only(bytes32 role) {
        _checkRole(role);
        _whenNotPaused();
        _;
    }

    // ------------------------------------------------------- access control
    /// @notice `keccak256("ADMIN_ROLE")`: roles, devices, tariffs, billing rules, pause.
    function ADMIN_ROLE() external pure returns (bytes32) {
        return ADMIN;
    }

    /// @notice `keccak256("HUB_ROLE")`: a ward oracle account.
    function HUB_ROLE() external pure returns (bytes32) {
        return HUB;
    }

    /// @notice `keccak256("DOCTOR_ROLE")`: admits, charges, discharges.
    function DOCTOR_ROLE() external pure returns (bytes32) {
        return DOCTOR;
    }

    /// @notice `keccak256("INSURER_ROLE")`: sets insurance policies.
    function INSURER_ROLE() external pure returns (bytes32) {
        return INSURER;
    }

    /// @notice Whether `account` holds `role`.
    function hasRole(bytes32 role, address account) external view returns (bool) {
        return _roles[role][account];
    }

    /// @notice Grants `role` to `account` (admins only; works while paused). No-op if held.
    function grantRole(bytes32 role, address account) external {
        _checkRole(ADMIN);
        _knownRole(role);
        if (account == address(0)) revert ZeroAddress();
        _grant(role, account);
    }

    /// @notice Revokes `role` from `account` (admins only; works while paused). No-op if not held.
    function revokeRole(bytes32 role, address account) external {
        _checkRole(ADMIN);
        _knownRole(role);
        _revoke(role, account);
    }

    /// @notice The caller gives up `role`; `callerConfirmation` must be the caller.
    function renounceRole(bytes32 role, address callerConfirmation) external {
        if (callerConfirmation != msg.sender) revert AccessControlBadConfirmation();
        _knownRole(role);
        _revoke(role, msg.sender);
    }

    function _knownRole(bytes32 role) internal pure {
        if (role != ADMIN && role != HUB && role != DOCTOR && role != INSURER) {
            revert UnknownRole(role);
        }
    }

    function _grant(bytes32 role, address account) internal {
        if (_roles[role][account]) return;
        _roles[role][account] = true;
        if (role == ADMIN) _adminCount += 1;
        emit RoleGranted(role, account, msg.sender);
    }

    function _revoke(bytes32 role, address account) internal {
        if (role == ADMIN && _roles[role][account] && _adminCount == 1) revert LastAdmin();
        if (!_roles[role][account]) return;
        _roles[role][account] = false;
        if (role == ADMIN) _adminCount -= 1;
        emit RoleRevoked(role, account, msg.sender);
    }

    /// @notice Whether state changes are paused.
    function paused() external view returns (bool) {
        return _paused;
    }

    /// @notice Emergency stop of every state change except role management.
    function pause() external {
        _checkRole(ADMIN);
        _whenNotPaused();
        _paused = true;
        emit Paused(msg.sender);
    }

    /// @notice Lifts the emergency stop.
    function unpause() external {
        _checkRole(ADMIN);
        if (!_paused) revert ExpectedPause();
        _paused = false;
        emit Unpaused(msg.sender);
    }

    // -------------------------------------------------------------- devices
    /// @notice Registers a device (status Pending) with its signing address and ward.
    function provisionDevice(bytes32 deviceId, address signer, bytes32 ward) external only(ADMIN) {
        if (deviceId == bytes32(0)) revert ZeroId();
        if (signer == address(0)) revert ZeroAddress();
        if (ward == bytes32(0)) revert ZeroId();
        Device storage d = _devices[deviceId];
        if (d.status != 0) revert DeviceAlreadyExists(deviceId);
        d.signer = signer;
        d.ward = ward;
        d.status = DEVICE_PENDING;
        emit DeviceProvisioned(deviceId, signer, ward);
    }

    /// @notice The hub accepts a pending device after its hello (status Active).
    function activateDevice(bytes32 deviceId) external only(HUB) {
        Device storage d = _existingDevice(deviceId);
        if (d.status != DEVICE_PENDING) revert InvalidDeviceStatus(deviceId, d.status);
        d.status = DEVICE_ACTIVE;
        emit DeviceActivated(deviceId, msg.sender);
    }

    /// @notice Withdraws a device at once, even while assigned; its readings are rejected.
    function revokeDevice(bytes32 deviceId) external only(ADMIN) {
        Device storage d = _existingDevice(deviceId);
        if (d.status == DEVICE_REVOKED) revert InvalidDeviceStatus(deviceId, d.status);
        d.status = DEVICE_REVOKED;
        emit DeviceRevoked(deviceId);
    }

    /// @notice A device's registration; zeros if unknown.
    function getDevice(bytes32 deviceId) external view returns (DeviceInfo memory) {
        Device storage d = _devices[deviceId];
        return DeviceInfo(d.signer, d.ward, d.status, d.patientId, d.lastSeq);
    }

    function _existingDevice(bytes32 deviceId) internal view returns (Device storage d) {
        d = _devices[deviceId];
        if (d.status == 0) revert UnknownDevice(deviceId);
    }

    // ------------------------------------------------------------- patients
    /// @notice Admits a stay on an active, free device; the ward is the device's and must have a bed rate.
    function admitPatient(bytes32 patientId, bytes32 deviceId) external only(DOCTOR) {
        if (patientId == bytes32(0)) revert ZeroId();
        Patient storage p = _patients[patientId];
        if (p.status != 0) revert PatientAlreadyExists(patientId);
        Device storage d = _existingDevice(deviceId);
        if (d.status != DEVICE_ACTIVE) revert InvalidDeviceStatus(deviceId, d.status);
        if (d.patientId != bytes32(0)) revert DeviceInUse(deviceId, d.patientId);
        // No stay starts unpriced: discharge bills bed days at the ward's rate.
        if (_tariffs[d.ward] == 0) revert WardHasNoTariff(d.ward);
        d.patientId = patientId;
        p.deviceId = deviceId;
        p.ward = d.ward;
        p.status = PATIENT_ADMITTED;
        p.admittedAt = uint64(block.timestamp);
        emit PatientAdmitted(patientId, deviceId, d.ward, uint64(block.timestamp));
    }

    /// @notice A stay's record; zeros if unknown.
    function getPatient(bytes32 patientId) external view returns (PatientInfo memory) {
        Patient storage p = _patients[patientId];
        // forge-lint: disable-next-line(unsafe-typecast)
        uint32 count = uint32(p.charges.length); // indices are uint32 by construction
        return PatientInfo(p.deviceId, p.ward, p.status, p.admittedAt, p.dischargedAt, count);
    }

    function _admitted(bytes32 patientId) internal view returns (Patient storage p) {
        p = _patients[patientId];
        if (p.status == 0) revert UnknownPatient(patientId);
        if (p.status != PATIENT_ADMITTED) revert InvalidPatientStatus(patientId, p.status);
    }

    // -------------------------------------------------------------- charges
    /// @notice Adds a line item (minor currency units) while the patient is admitted.
    function addCharge(bytes32 patientId, bytes32 code, uint8 category, uint32 quantity, uint64 unitPrice)
        external
        only(DOCTOR)
    {
        if (category >= CATEGORY_COUNT || quantity == 0) revert InvalidCharge(category, quantity);
        Patient storage p = _admitted(patientId);
        // forge-lint: disable-next-line(unsafe-typecast)
        uint32 index = uint32(p.charges.length); // one charge per transaction: never 2^32
        p.charges.push(Charge(code, category, quantity, unitPrice, msg.sender));
        p.categoryTotals[category] += uint256(quantity) * unitPrice;
        emit ChargeAdded(patientId, msg.sender, index, code, category, quantity, unitPrice);
    }

    /// @notice Charge `index` of a stay.
    function getCharge(bytes32 patientId, uint32 index) external view returns (ChargeInfo memory) {
        Patient storage p = _patients[patientId];
        if (index >= p.charges.length) revert UnknownCharge(patientId, index);
        Charge storage c = p.charges[index];
        return ChargeInfo(c.code, c.category, c.quantity, c.unitPrice, c.doctor);
    }

    // ------------------------------------------------- tariffs and policies
    /// @notice Sets a ward's bed rate per day (minor units, non-zero).
    function setTariff(bytes32 ward, uint64 dailyRate) external only(ADMIN) {
        if (ward == bytes32(0)) revert ZeroId();
        // Zero is how storage says "no tariff"; a set rate never reads as unset.
        if (dailyRate == 0) revert ZeroTariff(ward);
        _tariffs[ward] = dailyRate;
        emit TariffSet(ward, dailyRate);
    }

    /// @notice A ward's bed rate per day; zero if it has none.
    function tariff(bytes32 ward) external view returns (uint64) {
        return _tariffs[ward];
    }

    /// @notice The calling insurer sets (or updates its own) policy for an admitted patient.
    function setPolicy(
        bytes32 patientId,
        uint16 coverageBps,
        uint64 deductible,
        uint64 cap,
        uint8 coveredCategories
    ) external only(INSURER) {
        if (coverageBps > BPS) revert InvalidPolicy(coverageBps);
        Patient storage p = _admitted(patientId);
        address holder = p.policy.insurer;
        if (holder != address(0) && holder != msg.sender) revert NotPolicyInsurer(patientId, holder);
        p.policy = Policy(msg.sender, coverageBps, deductible, cap, coveredCategories);
        emit PolicySet(patientId, msg.sender, coverageBps, deductible, cap, coveredCategories);
    }

    /// @notice A stay's policy; zeros if none.
    function getPolicy(bytes32 patientId) external view returns (PolicyInfo memory) {
        Policy storage q = _patients[patientId].policy;
        return PolicyInfo(q.insurer, q.coverageBps, q.deductible, q.cap, q.coveredCategories);
    }

    // ------------------------------------------------------------ discharge
    /// @notice Discharges a stay (hub or doctor): computes, stores and emits the bill, frees the device.
    function discharge(bytes32 patientId) external {
        if (!_roles[HUB][msg.sender] && !_roles[DOCTOR][msg.sender]) {
            revert AccessControlUnauthorizedAccount(msg.sender, DOCTOR);
        }
        _whenNotPaused();
        Patient storage p = _admitted(patientId);
        uint64 now_ = uint64(block.timestamp);
        Bill memory b = _computeBill(p, now_);
        b.rulesVersion = _rulesVersion;
        p.bill = b;
        p.status = PATIENT_DISCHARGED;
        p.dischargedAt = now_;
        _devices[p.deviceId].patientId = bytes32(0);
        emit PatientDischarged(patientId, p.deviceId, now_, b.bedDays, b.total, b.covered, b.due);
    }

    /// @dev docs/CONTRACT.md "Billing"; the Rust definition is abi/src/rules/billing.rs.
    function _computeBill(Patient storage p, uint64 dischargedAt) internal view returns (Bill memory b) {
        uint256 stay = dischargedAt > p.admittedAt ? dischargedAt - p.admittedAt : 0;
        uint256 days_ = stay / DAY + (stay % DAY == 0 ? 0 : 1);
        if (days_ == 0) days_ = 1;
        // forge-lint: disable-next-line(unsafe-typecast)
        b.bedDays = uint64(days_); // a uint64 of seconds holds fewer than 2^64 days
        uint256 eligible;
        Policy storage q = p.policy;
        for (uint256 i = 0; i < CATEGORY_COUNT; i++) {
            uint256 t = p.categoryTotals[i];
            if (i == 0) t += days_ * _tariffs[p.ward];
            b.total += t;
            if ((uint256(q.coveredCategories) >> i) & 1 == 1) eligible += t;
        }
        if (q.insurer != address(0)) {
            uint256 above = eligible > q.deductible ? eligible - q.deductible : 0;
            uint256 share = above * q.coverageBps / BPS;
            b.covered = share < q.cap ? share : q.cap;
        }
        b.due = b.total - b.covered;
    }

    /// @notice The bill computed at discharge; zeros before.
    function getBill(bytes32 patientId) external view returns (BillInfo memory) {
        Bill storage b = _patients[patientId].bill;
        return BillInfo(b.total, b.covered, b.due, b.bedDays, b.rulesVersion);
    }

    // ------------------------------------------------ archive, billing rules
    /// @notice The hub records the IPFS CID and hash of a discharged stay's archive.
    function setArchive(bytes32 patientId, string calldata cid, bytes32 recordHash) external only(HUB) {
        if (bytes(cid).length == 0) revert EmptyCid();
        Patient storage p = _patients[patientId];
        if (p.status == 0) revert UnknownPatient(patientId);
        if (p.status != PATIENT_DISCHARGED) revert InvalidPatientStatus(patientId, p.status);
        p.cid = cid;
        p.recordHash = recordHash;
        p.status = PATIENT_ARCHIVED;
        emit RecordArchived(patientId, cid, recordHash);
    }

    /// @notice A stay's archive CID and record hash; empty before archiving.
    function getArchive(bytes32 patientId) external view returns (ArchiveInfo memory) {
        Patient storage p = _patients[patientId];
        return ArchiveInfo(p.cid, p.recordHash);
    }

    /// @notice Publishes the CID of the billing rules and software; bills record the version.
    function setBillingRules(string calldata cid) external only(ADMIN) {
        if (bytes(cid).length == 0) revert EmptyCid();
        _rulesCid = cid;
        _rulesVersion += 1;
        emit BillingRulesSet(_rulesVersion, cid);
    }

    /// @notice The current billing rules CID and version (0 before any).
    function billingRules() external view returns (BillingRulesInfo memory) {
        return BillingRulesInfo(_rulesCid, _rulesVersion);
    }

    // ------------------------------------------------ readings: hash mode
    /// @notice Anchors a Merkle root of readings as the calling hub's batch `seq`.
    /// @dev Stores the root alone (one slot, keyed by the batch id, which already
    /// encodes hub and seq); hub, seq, leaf count and time go in the event.
    function anchorBatch(uint64 seq, bytes32 root, uint32 leafCount)
        external
        only(HUB)
        returns (bytes32)
    {
        if (root == bytes32(0) || leafCount == 0) revert EmptyBatch();
        bytes32 batchId = batchIdOf(msg.sender, seq);
        if (_batchRoots[batchId] != bytes32(0)) revert BatchAlreadyAnchored(batchId);
        _batchRoots[batchId] = root;
        emit BatchAnchored(batchId, msg.sender, seq, root, leafCount, uint64(block.timestamp));
        return batchId;
    }

    /// @notice The Merkle root anchored as `batchId`; zero if none.
    function batchRoot(bytes32 batchId) external view returns (bytes32) {
        return _batchRoots[batchId];
    }

    /// @notice `keccak256(abi.encode(hub, seq))`.
    function batchIdOf(address hub, uint64 seq) public pure returns (bytes32) {
        return keccak256(abi.encode(hub, seq));
    }

    /// @notice Whether `leaf` with `proof` is in the batch (OpenZeppelin sorted-pair proofs).
    function verifyReading(bytes32 batchId, bytes32 leaf, bytes32[] calldata proof) external view returns (bool) {
        bytes32 root = _batchRoots[batchId];
        if (root == bytes32(0)) return false;
        bytes32 node = leaf;
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 s = proof[i];
            node = node < s ? keccak256(abi.encode(node, s)) : keccak256(abi.encode(s, node));
        }
        return node == root;
    }

    /// @notice The StandardMerkleTree leaf of a reading.
    function readingLeaf(Reading calldata reading) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(reading))));
    }

    // --------------------------------------------- readings: readings mode
    /// @notice The EIP-712 domain separator of this deployment.
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("HealthSense"), keccak256("1"), block.chainid, address(this)));
    }

    /// @notice The EIP-712 digest a device signs for `r`.
    function readingDigest(Reading calldata reading) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(READING_TYPEHASH, reading));
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR(), structHash));
    }

    /// @notice Posts device-signed vitals on chain, each checked against its device's signer.
    function postReadings(Reading[] calldata readings, bytes[] calldata signatures) external only(HUB) {
        if (readings.length != signatures.length) revert LengthMismatch(readings.length, signatures.length);
        for (uint256 i = 0; i < readings.length; i++) {
            Reading calldata r = readings[i];
            Device storage d = _existingDevice(r.deviceId);
            if (d.status != DEVICE_ACTIVE) revert InvalidDeviceStatus(r.deviceId, d.status);
            if (r.seq <= d.lastSeq) revert StaleSequence(r.deviceId, r.seq, d.lastSeq);
            if (_recover(readingDigest(r), signatures[i]) != d.signer) revert InvalidSignature(r.deviceId, r.seq);
            d.lastSeq = r.seq;
            emit ReadingPosted(
                r.deviceId,
                r.seq,
                r.timestamp,
                r.heartRate,
                r.respRate,
                r.spo2,
                r.systolic,
                r.diastolic,
                r.temperature,
                r.consciousness
            );
        }
    }

    /// @dev ecrecover with the spec's checks; address(0) for anything malformed.
    function _recover(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) return address(0);
        if (uint256(s) > HALF_ORDER) return address(0);
        return ecrecover(digest, v, r, s);
    }
}

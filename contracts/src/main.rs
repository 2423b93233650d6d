//! Prints the Solidity interface of the Stylus edition (`cargo stylus
//! export-abi`, or `scripts/export-abi`, which also writes the JSON ABI).
#![cfg_attr(not(feature = "export-abi"), no_main)]

#[cfg(feature = "export-abi")]
fn main() {
    // Both programs' interfaces; scripts/export-abi merges them into one.
    healthsense_contract::print_from_args();
    healthsense_contract::records::print_from_args();
}

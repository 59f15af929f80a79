//! JSON command frames: `Encoding::Json.decode_commands` and `iter_commands` agree, and every
//! decoded command re-encodes without panicking (bytes fields that are not JSON are an error,
//! not a panic) and decodes back to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::Encoding;

fuzz_target!(|data: &[u8]| {
    let all = Encoding::Json.decode_commands(data);
    let mut lazy = Vec::new();
    let mut lazy_error = false;
    for item in Encoding::Json.iter_commands(data) {
        match item {
            Ok(command) => lazy.push(command),
            Err(_) => lazy_error = true,
        }
    }
    match all {
        Ok(commands) => {
            assert!(
                !lazy_error,
                "iter_commands failed where decode_commands did not"
            );
            assert_eq!(commands, lazy);
            for command in &commands {
                let mut out = Vec::new();
                if Encoding::Json.encode_command(command, &mut out).is_ok() {
                    let again = Encoding::Json
                        .decode_commands(&out)
                        .expect("a re-encoded command decodes");
                    assert_eq!(again.as_slice(), std::slice::from_ref(command));
                }
                let mut out = Vec::new();
                Encoding::Protobuf
                    .encode_command(command, &mut out)
                    .expect("protobuf encoding into a Vec cannot fail");
            }
        }
        Err(_) => assert!(
            lazy_error,
            "decode_commands failed where iter_commands did not"
        ),
    }
});

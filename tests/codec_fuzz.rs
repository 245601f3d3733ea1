//! Deterministic mutation testing of the codecs that have cargo-fuzz targets: HTTP heads, chunked
//! bodies, gzip, schema archives, SQL splitting, PostgreSQL framing, `/call` rendering and
//! parameter encoding, and the deploy form. The properties are the fuzz targets' own
//! (`tests/fuzz/props.rs`, compiled in here), so CI checks what the fuzzer checks: seeds are mutated
//! by a fixed xorshift generator, many thousands of cases per codec, and nothing may panic.

#[path = "fuzz/props.rs"]
mod props;

use stonescriptdb_gateway::call::types;

/// xorshift64*: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One to four random edits; `keep` leading bytes (the selectors) are edited less often so the
/// mutants stay aimed at the mode their seed was written for.
fn mutate(rng: &mut Rng, input: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => data.truncate(rng.below(len + 1)),
            3 | 4 => {
                let at = rng.below(len + 1);
                let token = rng.pick(tokens);
                data.splice(at..at, token.iter().copied());
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1).min(16);
                data.drain(start..end);
            }
            6 if len > 0 => {
                let start = rng.below(len);
                let end = start + rng.below(len - start + 1).min(64);
                let chunk = data[start..end].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            7 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.pick(&[0x00, 0x01, 0x7f, 0x80, 0xff, b'\r', b'\n', b'"', b'\\']);
            }
            _ => {
                let at = rng.below(len + 1);
                let byte = rng.next() as u8;
                data.insert(at, byte);
            }
        }
    }
    data
}

/// Runs `check` on the seeds and `cases` more inputs (mostly mutated seeds, some fresh random
/// bytes), and requires both outcomes (accepted / refused) to occur, or the run proves little.
fn run(name: &str, seed: u64, cases: usize, seeds: &[Vec<u8>], tokens: &[&[u8]], check: fn(&[u8]) -> bool) {
    let mut rng = Rng(seed);
    for seed in seeds {
        check(seed);
    }
    let mut accepted = 0;
    for i in 0..cases {
        let input = if rng.below(5) == 0 {
            let n = rng.below(200);
            rng.bytes(n)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed, tokens)
        };
        match std::panic::catch_unwind(|| check(&input)) {
            Ok(ok) => accepted += usize::from(ok),
            Err(e) => {
                eprintln!("{name}: case {i} failed on input {input:?}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("{name}: {accepted} of {cases} cases accepted");
    assert!(accepted > cases / 100 && accepted < cases, "{name}: accepted {accepted} of {cases}");
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    [prefix, body].concat()
}

#[test]
fn http_head() {
    let heads: &[&[u8]] = &[
        b"GET /health?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\nrest",
        b"POST /call HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\n{}",
        b"POST /register HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: ::1\r\n\r\n",
        b"GET /admin/databases?platform=a%20b HTTP/1.1\r\nAuthorization: Bearer t\r\nAccept: */*\r\n",
    ];
    let mut seeds = Vec::new();
    for h in heads {
        for sel in [0u8, 0x31, 0xf3, 0x7f] {
            seeds.push(with_prefix(&[sel, 0, 9], h));
        }
    }
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b": ",
        b",",
        b"Content-Length: 3\r\n",
        b"Content-Length: 3, 4\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Connection: close\r\n",
        b"HTTP/1.0",
        b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b"\xc3\xa9",
        b"?",
        b"%",
    ];
    run("http_head", 0x4EAD_0001, 20_000, &seeds, tokens, props::http_head);
}

#[test]
fn chunked() {
    let bodies: &[&[u8]] = &[
        b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT",
        b"0\r\n\r\n",
        b"a\r\n0123456789\r\n0\r\n\r\n",
        b"1 ; x=\"y\"\r\nA\r\nFFFFF\r\n",
    ];
    let mut seeds = Vec::new();
    for b in bodies {
        for prefix in [&[4u8, 0][..], &[3, 3, 0, 2, 0, 7, 0, 30], &[1, 1, 0, 5], &[2, 0]] {
            seeds.push(with_prefix(prefix, b));
        }
    }
    let tokens: &[&[u8]] =
        &[b"\r\n", b"\r", b"\n", b";", b"0\r\n\r\n", b"f", b"F", b" ", b"\t", b"X: y\r\n", b"ffffffffffffffff"];
    run("chunked", 0xC4A1_0002, 20_000, &seeds, tokens, props::chunked);
}

#[test]
fn gzip() {
    let payloads: &[&[u8]] = &[b"", b"hello gzip hello gzip hello gzip", b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", b"x"];
    let mut seeds = Vec::new();
    for p in payloads {
        for flags in [0u8, 0x1f, 0x0a] {
            seeds.push(with_prefix(&[1, 6, flags, 0, 7, 2], p));
            seeds.push(with_prefix(&[2, 1, flags, 3, 0, 5, 9, 0, 0, 3], p));
            let mut raw = vec![0x30];
            raw.extend_from_slice(&props::gzip_member(p, 9, flags));
            seeds.push(raw);
        }
    }
    let tokens: &[&[u8]] = &[b"\x1f\x8b\x08\x00", b"\0\0\0\0", b"\xff\xff", b"\x03\x00", b"\x01\x00\x00\xff\xff"];
    run("gzip", 0x621F_0003, 4_000, &seeds, tokens, props::gzip);
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, data) in entries {
        tar.extend_from_slice(&props::tar_header(name.as_bytes(), b"", b'0', data.len() as u64, false));
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    props::gzip_member(&tar, 1, 0)
}

#[test]
fn archive() {
    let mut seeds = vec![
        with_prefix(&[0], &tar_gz(&[("postgresql/tables/a.sql", b"CREATE TABLE a (x int);")])),
        with_prefix(
            &[0],
            &tar_gz(&[
                ("top/postgresql/functions/f.pgsql", b"SELECT 1;"),
                ("top/postgresql/migrations/2_x.sql", b"\xEF\xBB\xBFALTER TABLE a ADD y int;"),
                ("top/README.md", b"hi"),
            ]),
        ),
        with_prefix(&[0], &tar_gz(&[("extensions/list.txt", b"pgcrypto\n")])),
    ];
    // Structured mode: every byte string is a valid recipe, so random ones are good seeds.
    let mut rng = Rng(0xA2C4_5EED);
    for _ in 0..16 {
        let mut s = vec![rng.pick(&[1u8, 3, 5, 9, 17, 31])];
        s.extend(rng.bytes(120));
        seeds.push(s);
    }
    let tokens: &[&[u8]] = &[b"\0", b"\x02", b"\x05", b"\x0a", b"\x13", b"\x18", b"\xff"];
    run("archive", 0xA2C4_0004, 6_000, &seeds, tokens, props::archive);
}

#[test]
fn sql_split() {
    let seeds: Vec<Vec<u8>> = [
        "CREATE TABLE a (x int);\n\n;  -- only a comment\n;\nSELECT 1",
        "SELECT 'a;b', 'it''s;', \"we;ird\"\"x;\" FROM t; SELECT 2",
        "SELECT E'\\';' AS x; SELECT e'a\\\\'; SELECT 3",
        "CREATE FUNCTION f() RETURNS int AS $fn$\nBEGIN\n  PERFORM 1; RAISE NOTICE $$a;b$$;\n  RETURN 1;\nEND;\n$fn$ LANGUAGE plpgsql;\nSELECT f();",
        "PREPARE p AS SELECT $1, $2 FROM t WHERE a = $1; SELECT a$b; SELECT 'x'",
        "SELECT 1 /* outer /* inner; */ still; */ + 1; SELECT '--;' -- x;y\n; SELECT 3",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 4",
        "SELECT 1e5, 1.5e, x.y, \"é\" -- ünïcode\n; SELECT 'é;'",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let tokens: &[&[u8]] = &[
        b";",
        b"'",
        b"''",
        b"\"",
        b"E'",
        b"\\",
        b"$$",
        b"$a$",
        b"$1",
        b"--",
        b"/*",
        b"*/",
        b"\n",
        b" ",
        b"\t",
        b"BEGIN ATOMIC",
        b"\xc2\xa0",
        b"\xe3\x80\x80",
        b"END",
        b"CASE",
        b"\xc3\xa9",
        b"\x0c",
    ];
    run("sql_split", 0x5A1_0005, 20_000, &seeds, tokens, props::sql_split);
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn pg_frame() {
    let mut stream = frame(b'E', b"SERROR\0C42P01\0Mno table\0\0");
    stream.extend(frame(b'N', b"SNOTICE\0C00000\0Mhi\0\0"));
    let mut t = vec![0, 1];
    t.extend_from_slice(b"a\0");
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0, 0, 0, 0, 0, 0]);
    stream.extend(frame(b'T', &t));
    let mut d = vec![0, 3];
    d.extend_from_slice(&2i32.to_be_bytes());
    d.extend_from_slice(b"42");
    d.extend_from_slice(&(-1i32).to_be_bytes());
    d.extend_from_slice(&0i32.to_be_bytes());
    stream.extend(frame(b'D', &d));
    stream.extend(frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"));
    stream.extend(frame(b'C', b"SELECT 1\0"));
    stream.extend(frame(b'Z', b"I"));
    let mut rng = Rng(0x96F2_5EED);
    let mut seeds = vec![with_prefix(&[0, 3], &stream), with_prefix(&[0, 0], &stream[..40])];
    for _ in 0..8 {
        let mut s = vec![1u8, rng.next() as u8];
        s.extend(rng.bytes(80));
        seeds.push(s);
    }
    let tokens: &[&[u8]] = &[b"\0\0\0\x04", b"\xff\xff\xff\xff", b"\0\0\0\0", b"D", b"T", b"E", b"R", b"\0"];
    run("pg_frame", 0x96F2_0006, 20_000, &seeds, tokens, props::pg_frame);
}

#[test]
fn scram() {
    let n = props::SCRAM_NONCE;
    let mut seeds = Vec::new();
    for (salt, i) in [("W22ZaJ0SNY7soEsUEjb6gQ==", 1), ("c2FsdA==", 2), ("", 3), ("QUJD", 16)] {
        let first = format!("r={n}srv%$x,s={salt},i={i}");
        for last in ["v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "e=invalid-proof", ""] {
            seeds.push(format!("{first}\0{last}").into_bytes());
        }
        seeds.push(format!("{first},x=ext").into_bytes());
    }
    let tokens: &[&[u8]] = &[b"r=", b"s=", b"i=", b",", b"=", b"m=", b"v=", b"e=", b"\0", b"9", n.as_bytes()];
    run("scram", 0x5C7A_0001, 5_000, &seeds, tokens, props::scram);
}

/// The two selector bytes that make the call checks use `oid`.
fn oid_prefix(oid: u32) -> [u8; 2] {
    let i = props::type_oids().iter().position(|&o| o == oid).expect("oid in the registry");
    (i as u16).to_be_bytes()
}

#[test]
fn call_render() {
    let bin_int4_array = {
        let mut v = Vec::new();
        for x in [1i32, 0, 23, 2, 1, 4, 7, -1] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    };
    let cases: &[(u32, u8, &[u8])] = &[
        (1007, 0, b"{1,2,NULL,\"3\"}"),
        (1007, 1, &bin_int4_array),
        (1009, 0, b"{{\"a,b\",\"{\"},{\"\\\"\",\"\\\\\"},{NULL,\"NULL\"},{\"\",\" sp \"}}"),
        (1020, 0, b"{(1,2),(3,4);(5,6),(7,8)}"),
        (types::JSONB, 0, br#"{"a":[1,2.5e3,"\u00e9"],"b":null}"#),
        (types::JSONB, 1, b"\x01[true,false]"),
        (types::JSON, 0, b"\"\\ud83d\\ude00\""),
        (types::NUMERIC, 0, b"-12.5000"),
        (types::NUMERIC, 1, b"\x00\x02\x00\x00\x40\x00\x00\x02\x00\x0c\x13\x88"),
        (types::FLOAT8, 1, b"\x7f\xf8\0\0\0\0\0\0"),
        (types::TIMESTAMPTZ, 0, b"2026-11-27 18:34:44.5+05:30"),
        (types::TIMESTAMP, 0, b"2026-11-27 18:34:44"),
        (types::UUID, 1, b"0123456789abcdef"),
        (types::BYTEA, 1, b"\0\x01\xff"),
        (types::BOOL, 0, b"t"),
        (types::RECORD, 0, b"(1,\"a b\",,\"x\"\"y\")"),
        (90005, 0, b"(7,\"{a,b}\",\"(1,x)\",happy,1.5,\"{}\",\"\\\\x00\")"),
        (90009, 0, b"(\"(,1)\",2)"),
        (90012, 0, b"{\"(1,{},\\\"(2,y)\\\",sad,0,null,)\"}"),
        (90013, 0, b"(\"{1,2}\",\"{(1,1),(0,0)}\",0123-4567)"),
        (90010, 0, b"loop"),
        (77_777, 1, b"whatever"),
    ];
    let mut seeds = Vec::new();
    for (oid, format, raw) in cases {
        seeds.push(with_prefix(&[oid_prefix(*oid)[0], oid_prefix(*oid)[1], *format], raw));
    }
    // Binary-array mode: header built by the check, elements from the rest.
    for oid in [1007u32, 1009, 1016, 90004, 90011] {
        let p = oid_prefix(oid);
        seeds.push([&p[..], &[5, 2, 0, 0, 0, 0, 0, 3, 4], &bin_int4_array[12..]].concat());
        seeds.push([&p[..], &[5, 1, 0, 0, 0, 0, 0, 3], &bin_int4_array[20..]].concat());
    }
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"(",
        b")",
        b",",
        b"\"",
        b"\\",
        b"NULL",
        b"[1:2]=",
        b";",
        b"\0\0\0\x01",
        b"\xff\xff\xff\xff",
        b"\0\0\0\0",
        b"\\ud800",
        b"1e5",
        b"-",
        b"\x01",
        b"\x7f\xff\xff\xff",
    ];
    run("call_render", 0xCA11_0007, 20_000, &seeds, tokens, props::call_render);
}

#[test]
fn call_encode() {
    let cases: &[(u32, &str)] = &[
        (1009, r#"["a,b","{","\"","\\",null,"NULL",""," sp "]"#),
        (1009, r#"[["a","b"],["c",null]]"#),
        (1007, "[1,2,null,-3]"),
        (1020, r#"["(1,2),(3,4)","(5,6),(7,8)"]"#),
        (3807, r#"[{"a":[1,2]},[3],"x",null]"#),
        (1000, "[true,false,null]"),
        (1231, "[1.5,-2e3,0]"),
        (90004, r#"[{"x":1,"y":"a"},{"y":null},null]"#),
        (90012, r#"[{"id":1,"tags":["a","b"],"inn":{"x":2},"m":"happy","n":1.5,"j":{"k":[]},"b":"\\x00"}]"#),
        (90014, r#"[{"me":{"me":{"v":1}},"v":2}]"#),
        (90015, r#"[["a"],["b","c"]]"#),
        (90007, r#"["x","y"]"#),
        (90005, r#"{"id":"1","unknown":2}"#),
        (types::INT4, "42"),
        (types::TEXT, r#"{"a":"b"}"#),
        (types::UUID, "true"),
    ];
    let mut seeds = Vec::new();
    for (oid, json) in cases {
        seeds.push(with_prefix(&oid_prefix(*oid), json.as_bytes()));
    }
    let tokens: &[&[u8]] = &[
        b"[",
        b"]",
        b"{",
        b"}",
        b",",
        b"\"",
        b"\\\"",
        b"\\\\",
        b"null",
        b"\"NULL\"",
        b"\"a,b\"",
        b"\"(1,2),(3,4)\"",
        b"\\u0000",
        b"1.5",
        b"true",
        b"\"x\":",
    ];
    run("call_encode", 0xE4C0_0008, 20_000, &seeds, tokens, props::call_encode);
}

#[test]
fn deploy_form() {
    let b = "------------------------5ae9e2bf3874f5b6";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"platform\"\r\n\r\n demo \r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"force\"\r\n\r\ntrue\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"schema\"; filename=\"s.tar.gz\"\r\n\
         Content-Type: application/gzip\r\n\r\n\x1f\u{8b}data\r\n--{b}--\r\n"
    );
    let seeds = vec![with_prefix(&[0xf1], body.as_bytes()), with_prefix(&[0x05], body.as_bytes())];
    let delimiter = format!("\r\n--{b}");
    let tokens: &[&[u8]] = &[
        delimiter.as_bytes(),
        b"\r\n",
        b"name=\"schema\"",
        b"name=\"file\"",
        b"name=dry_run",
        b"maybe",
        b"\xff",
        b"--",
    ];
    run("deploy_form", 0xF0E4_0009, 10_000, &seeds, tokens, props::deploy_form);
}

#[test]
fn call_body() {
    let bodies: &[&[u8]] = &[
        br#"{"platform":"acme","tenant_id":"t1","function":"get_user","params":[1,"x",null]}"#,
        br#" { "platform" : "Acme" , "function" : "f" , "params" : { "a" : 1 , "b" : [ true ] } } "#,
        br#"{"platform":"a","tenant_id":7,"function":"f","consistency":"primary","params":[]}"#,
        br#"{"pl\u0061tform":"a\n","function":"f","function":"g","params":[{"x":[1]}],"params":[2]}"#,
        br#"{"platform":"a","function":"f","params":"x","extra":{"deep":[[[[1]]]]}}"#,
    ];
    let mut seeds = Vec::new();
    for b in bodies {
        for depth in [1u8, 2, 3, 7] {
            seeds.push(with_prefix(&[depth], b));
        }
    }
    let tokens: &[&[u8]] = &[
        b"\"platform\":",
        b"\"tenant_id\":",
        b"\"function\":",
        b"\"params\":",
        b"\"consistency\":",
        b"\"any\"",
        b"\\u0066",
        b"\\\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b"null",
        b"-1.5e3",
        b"\xc3\xa9",
    ];
    run("call_body", 0xCA11_B0D1, 20_000, &seeds, tokens, props::call_body);
}

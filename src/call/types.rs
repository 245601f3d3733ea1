//! Owns what the gateway knows about PostgreSQL types: builtin OIDs, user types learned from the catalog.

use std::collections::HashMap;

/// What kind of type an OID names, as far as encoding and rendering care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Scalar,
    Enum,
    Domain { base: u32 },
    Composite { fields: Vec<(String, u32)> },
    Array { elem: u32 },
    Range,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub oid: u32,
    pub name: String,
    pub kind: TypeKind,
}

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const JSON: u32 = 114;
pub const XML: u32 = 142;
pub const POINT: u32 = 600;
pub const BOX: u32 = 603;
pub const CIDR: u32 = 650;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const MONEY: u32 = 790;
pub const MACADDR: u32 = 829;
pub const INET: u32 = 869;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const TIMETZ: u32 = 1266;
pub const BIT: u32 = 1560;
pub const VARBIT: u32 = 1562;
pub const NUMERIC: u32 = 1700;
pub const RECORD: u32 = 2249;
pub const VOID: u32 = 2278;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// OIDs below this are assigned by initdb; user-created types start here.
pub const FIRST_USER_OID: u32 = 16384;

/// How deep domain/array/composite chains are followed (the same bound as for literals).
pub use super::literal::MAX_DEPTH;

/// Looks up the catalog rows for a set of type OIDs. `$1` is text such as `{16385,16390}`.
///
/// Columns, all text: oid, typname, typtype, array element (0 unless the type is a true varlena
/// array: `name` and `point` also have a typelem but are not arrays), typbasetype, attribute names
/// and attribute type OIDs as text arrays in attnum order (live user columns only; `{}` otherwise).
pub const INTROSPECTION_SQL: &str = "SELECT t.oid::text, t.typname::text, t.typtype::text, \
CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE 0 END::oid::text, \
t.typbasetype::text, \
COALESCE((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
WHERE a.attrelid = t.typrelid AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped), '{}')::text, \
COALESCE((SELECT array_agg(a.atttypid ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
WHERE a.attrelid = t.typrelid AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped), '{}')::text \
FROM pg_catalog.pg_type t WHERE t.oid = ANY ($1::text::pg_catalog.oid[])";

#[derive(Clone, Copy)]
enum B {
    S,
    R,
    O,
    A(u32),
}
use B::{A, O, R, S};

/// Every base, range, multirange and pseudo type of a PostgreSQL 15 initdb (generated from its
/// pg_type); builtin composite row types are left to `missing`/`add_rows` like user types.
static BUILTINS: &[(u32, &str, B)] = &[
    (16, "bool", S),
    (17, "bytea", S),
    (18, "char", S),
    (19, "name", S),
    (20, "int8", S),
    (21, "int2", S),
    (22, "int2vector", A(21)),
    (23, "int4", S),
    (24, "regproc", S),
    (25, "text", S),
    (26, "oid", S),
    (27, "tid", S),
    (28, "xid", S),
    (29, "cid", S),
    (30, "oidvector", A(26)),
    (32, "pg_ddl_command", O),
    (114, "json", S),
    (142, "xml", S),
    (143, "_xml", A(142)),
    (194, "pg_node_tree", S),
    (199, "_json", A(114)),
    (210, "_pg_type", A(71)),
    (269, "table_am_handler", O),
    (270, "_pg_attribute", A(75)),
    (271, "_xid8", A(5069)),
    (272, "_pg_proc", A(81)),
    (273, "_pg_class", A(83)),
    (325, "index_am_handler", O),
    (600, "point", S),
    (601, "lseg", S),
    (602, "path", S),
    (603, "box", S),
    (604, "polygon", S),
    (628, "line", S),
    (629, "_line", A(628)),
    (650, "cidr", S),
    (651, "_cidr", A(650)),
    (700, "float4", S),
    (701, "float8", S),
    (705, "unknown", O),
    (718, "circle", S),
    (719, "_circle", A(718)),
    (774, "macaddr8", S),
    (775, "_macaddr8", A(774)),
    (790, "money", S),
    (791, "_money", A(790)),
    (829, "macaddr", S),
    (869, "inet", S),
    (1000, "_bool", A(16)),
    (1001, "_bytea", A(17)),
    (1002, "_char", A(18)),
    (1003, "_name", A(19)),
    (1005, "_int2", A(21)),
    (1006, "_int2vector", A(22)),
    (1007, "_int4", A(23)),
    (1008, "_regproc", A(24)),
    (1009, "_text", A(25)),
    (1010, "_tid", A(27)),
    (1011, "_xid", A(28)),
    (1012, "_cid", A(29)),
    (1013, "_oidvector", A(30)),
    (1014, "_bpchar", A(1042)),
    (1015, "_varchar", A(1043)),
    (1016, "_int8", A(20)),
    (1017, "_point", A(600)),
    (1018, "_lseg", A(601)),
    (1019, "_path", A(602)),
    (1020, "_box", A(603)),
    (1021, "_float4", A(700)),
    (1022, "_float8", A(701)),
    (1027, "_polygon", A(604)),
    (1028, "_oid", A(26)),
    (1033, "aclitem", S),
    (1034, "_aclitem", A(1033)),
    (1040, "_macaddr", A(829)),
    (1041, "_inet", A(869)),
    (1042, "bpchar", S),
    (1043, "varchar", S),
    (1082, "date", S),
    (1083, "time", S),
    (1114, "timestamp", S),
    (1115, "_timestamp", A(1114)),
    (1182, "_date", A(1082)),
    (1183, "_time", A(1083)),
    (1184, "timestamptz", S),
    (1185, "_timestamptz", A(1184)),
    (1186, "interval", S),
    (1187, "_interval", A(1186)),
    (1231, "_numeric", A(1700)),
    (1263, "_cstring", A(2275)),
    (1266, "timetz", S),
    (1270, "_timetz", A(1266)),
    (1560, "bit", S),
    (1561, "_bit", A(1560)),
    (1562, "varbit", S),
    (1563, "_varbit", A(1562)),
    (1700, "numeric", S),
    (1790, "refcursor", S),
    (2201, "_refcursor", A(1790)),
    (2202, "regprocedure", S),
    (2203, "regoper", S),
    (2204, "regoperator", S),
    (2205, "regclass", S),
    (2206, "regtype", S),
    (2207, "_regprocedure", A(2202)),
    (2208, "_regoper", A(2203)),
    (2209, "_regoperator", A(2204)),
    (2210, "_regclass", A(2205)),
    (2211, "_regtype", A(2206)),
    (2249, "record", O),
    (2275, "cstring", O),
    (2276, "any", O),
    (2277, "anyarray", O),
    (2278, "void", O),
    (2279, "trigger", O),
    (2280, "language_handler", O),
    (2281, "internal", O),
    (2283, "anyelement", O),
    (2287, "_record", A(2249)),
    (2776, "anynonarray", O),
    (2949, "_txid_snapshot", A(2970)),
    (2950, "uuid", S),
    (2951, "_uuid", A(2950)),
    (2970, "txid_snapshot", S),
    (3115, "fdw_handler", O),
    (3220, "pg_lsn", S),
    (3221, "_pg_lsn", A(3220)),
    (3310, "tsm_handler", O),
    (3361, "pg_ndistinct", S),
    (3402, "pg_dependencies", S),
    (3500, "anyenum", O),
    (3614, "tsvector", S),
    (3615, "tsquery", S),
    (3642, "gtsvector", S),
    (3643, "_tsvector", A(3614)),
    (3644, "_gtsvector", A(3642)),
    (3645, "_tsquery", A(3615)),
    (3734, "regconfig", S),
    (3735, "_regconfig", A(3734)),
    (3769, "regdictionary", S),
    (3770, "_regdictionary", A(3769)),
    (3802, "jsonb", S),
    (3807, "_jsonb", A(3802)),
    (3831, "anyrange", O),
    (3838, "event_trigger", O),
    (3904, "int4range", R),
    (3905, "_int4range", A(3904)),
    (3906, "numrange", R),
    (3907, "_numrange", A(3906)),
    (3908, "tsrange", R),
    (3909, "_tsrange", A(3908)),
    (3910, "tstzrange", R),
    (3911, "_tstzrange", A(3910)),
    (3912, "daterange", R),
    (3913, "_daterange", A(3912)),
    (3926, "int8range", R),
    (3927, "_int8range", A(3926)),
    (4072, "jsonpath", S),
    (4073, "_jsonpath", A(4072)),
    (4089, "regnamespace", S),
    (4090, "_regnamespace", A(4089)),
    (4096, "regrole", S),
    (4097, "_regrole", A(4096)),
    (4191, "regcollation", S),
    (4192, "_regcollation", A(4191)),
    (4451, "int4multirange", O),
    (4532, "nummultirange", O),
    (4533, "tsmultirange", O),
    (4534, "tstzmultirange", O),
    (4535, "datemultirange", O),
    (4536, "int8multirange", O),
    (4537, "anymultirange", O),
    (4538, "anycompatiblemultirange", O),
    (4600, "pg_brin_bloom_summary", S),
    (4601, "pg_brin_minmax_multi_summary", S),
    (5017, "pg_mcv_list", S),
    (5038, "pg_snapshot", S),
    (5039, "_pg_snapshot", A(5038)),
    (5069, "xid8", S),
    (5077, "anycompatible", O),
    (5078, "anycompatiblearray", O),
    (5079, "anycompatiblenonarray", O),
    (5080, "anycompatiblerange", O),
    (6150, "_int4multirange", A(4451)),
    (6151, "_nummultirange", A(4532)),
    (6152, "_tsmultirange", A(4533)),
    (6153, "_tstzmultirange", A(4534)),
    (6155, "_datemultirange", A(4535)),
    (6157, "_int8multirange", A(4536)),
    (10000, "_pg_attrdef", A(10001)),
    (10002, "_pg_constraint", A(10003)),
    (10004, "_pg_inherits", A(10005)),
    (10006, "_pg_index", A(10007)),
    (10008, "_pg_operator", A(10009)),
    (10010, "_pg_opfamily", A(10011)),
    (10012, "_pg_opclass", A(10013)),
    (10014, "_pg_am", A(10015)),
    (10016, "_pg_amop", A(10017)),
    (10018, "_pg_amproc", A(10019)),
    (10020, "_pg_language", A(10021)),
    (10022, "_pg_largeobject_metadata", A(10023)),
    (10024, "_pg_largeobject", A(10025)),
    (10026, "_pg_aggregate", A(10027)),
    (10028, "_pg_statistic", A(10029)),
    (10030, "_pg_statistic_ext", A(10031)),
    (10032, "_pg_statistic_ext_data", A(10033)),
    (10034, "_pg_rewrite", A(10035)),
    (10036, "_pg_trigger", A(10037)),
    (10038, "_pg_event_trigger", A(10039)),
    (10040, "_pg_description", A(10041)),
    (10042, "_pg_cast", A(10043)),
    (10044, "_pg_enum", A(10045)),
    (10046, "_pg_namespace", A(10047)),
    (10048, "_pg_conversion", A(10049)),
    (10050, "_pg_depend", A(10051)),
    (10052, "_pg_database", A(1248)),
    (10053, "_pg_db_role_setting", A(10054)),
    (10055, "_pg_tablespace", A(10056)),
    (10057, "_pg_authid", A(2842)),
    (10058, "_pg_auth_members", A(2843)),
    (10059, "_pg_shdepend", A(10060)),
    (10061, "_pg_shdescription", A(10062)),
    (10063, "_pg_ts_config", A(10064)),
    (10065, "_pg_ts_config_map", A(10066)),
    (10067, "_pg_ts_dict", A(10068)),
    (10069, "_pg_ts_parser", A(10070)),
    (10071, "_pg_ts_template", A(10072)),
    (10073, "_pg_extension", A(10074)),
    (10075, "_pg_foreign_data_wrapper", A(10076)),
    (10077, "_pg_foreign_server", A(10078)),
    (10079, "_pg_user_mapping", A(10080)),
    (10081, "_pg_foreign_table", A(10082)),
    (10083, "_pg_policy", A(10084)),
    (10085, "_pg_replication_origin", A(10086)),
    (10087, "_pg_default_acl", A(10088)),
    (10089, "_pg_init_privs", A(10090)),
    (10091, "_pg_seclabel", A(10092)),
    (10093, "_pg_shseclabel", A(4066)),
    (10094, "_pg_collation", A(10095)),
    (10096, "_pg_parameter_acl", A(10097)),
    (10098, "_pg_partitioned_table", A(10099)),
    (10100, "_pg_range", A(10101)),
    (10102, "_pg_transform", A(10103)),
    (10104, "_pg_sequence", A(10105)),
    (10106, "_pg_publication", A(10107)),
    (10108, "_pg_publication_namespace", A(10109)),
    (10110, "_pg_publication_rel", A(10111)),
    (10112, "_pg_subscription", A(6101)),
    (10113, "_pg_subscription_rel", A(10114)),
    (12001, "_pg_roles", A(12002)),
    (12006, "_pg_shadow", A(12007)),
    (12011, "_pg_group", A(12012)),
    (12015, "_pg_user", A(12016)),
    (12019, "_pg_policies", A(12020)),
    (12024, "_pg_rules", A(12025)),
    (12029, "_pg_views", A(12030)),
    (12034, "_pg_tables", A(12035)),
    (12039, "_pg_matviews", A(12040)),
    (12044, "_pg_indexes", A(12045)),
    (12049, "_pg_sequences", A(12050)),
    (12054, "_pg_stats", A(12055)),
    (12059, "_pg_stats_ext", A(12060)),
    (12064, "_pg_stats_ext_exprs", A(12065)),
    (12069, "_pg_publication_tables", A(12070)),
    (12074, "_pg_locks", A(12075)),
    (12078, "_pg_cursors", A(12079)),
    (12082, "_pg_available_extensions", A(12083)),
    (12086, "_pg_available_extension_versions", A(12087)),
    (12091, "_pg_prepared_xacts", A(12092)),
    (12096, "_pg_prepared_statements", A(12097)),
    (12100, "_pg_seclabels", A(12101)),
    (12105, "_pg_settings", A(12106)),
    (12111, "_pg_file_settings", A(12112)),
    (12115, "_pg_hba_file_rules", A(12116)),
    (12119, "_pg_ident_file_mappings", A(12120)),
    (12123, "_pg_timezone_abbrevs", A(12124)),
    (12127, "_pg_timezone_names", A(12128)),
    (12131, "_pg_config", A(12132)),
    (12135, "_pg_shmem_allocations", A(12136)),
    (12139, "_pg_backend_memory_contexts", A(12140)),
    (12143, "_pg_stat_all_tables", A(12144)),
    (12148, "_pg_stat_xact_all_tables", A(12149)),
    (12153, "_pg_stat_sys_tables", A(12154)),
    (12158, "_pg_stat_xact_sys_tables", A(12159)),
    (12162, "_pg_stat_user_tables", A(12163)),
    (12167, "_pg_stat_xact_user_tables", A(12168)),
    (12171, "_pg_statio_all_tables", A(12172)),
    (12176, "_pg_statio_sys_tables", A(12177)),
    (12180, "_pg_statio_user_tables", A(12181)),
    (12184, "_pg_stat_all_indexes", A(12185)),
    (12189, "_pg_stat_sys_indexes", A(12190)),
    (12193, "_pg_stat_user_indexes", A(12194)),
    (12197, "_pg_statio_all_indexes", A(12198)),
    (12202, "_pg_statio_sys_indexes", A(12203)),
    (12206, "_pg_statio_user_indexes", A(12207)),
    (12210, "_pg_statio_all_sequences", A(12211)),
    (12215, "_pg_statio_sys_sequences", A(12216)),
    (12219, "_pg_statio_user_sequences", A(12220)),
    (12223, "_pg_stat_activity", A(12224)),
    (12228, "_pg_stat_replication", A(12229)),
    (12233, "_pg_stat_slru", A(12234)),
    (12237, "_pg_stat_wal_receiver", A(12238)),
    (12241, "_pg_stat_recovery_prefetch", A(12242)),
    (12245, "_pg_stat_subscription", A(12246)),
    (12250, "_pg_stat_ssl", A(12251)),
    (12254, "_pg_stat_gssapi", A(12255)),
    (12258, "_pg_replication_slots", A(12259)),
    (12263, "_pg_stat_replication_slots", A(12264)),
    (12267, "_pg_stat_database", A(12268)),
    (12272, "_pg_stat_database_conflicts", A(12273)),
    (12276, "_pg_stat_user_functions", A(12277)),
    (12281, "_pg_stat_xact_user_functions", A(12282)),
    (12286, "_pg_stat_archiver", A(12287)),
    (12290, "_pg_stat_bgwriter", A(12291)),
    (12294, "_pg_stat_wal", A(12295)),
    (12298, "_pg_stat_progress_analyze", A(12299)),
    (12303, "_pg_stat_progress_vacuum", A(12304)),
    (12308, "_pg_stat_progress_cluster", A(12309)),
    (12313, "_pg_stat_progress_create_index", A(12314)),
    (12318, "_pg_stat_progress_basebackup", A(12319)),
    (12323, "_pg_stat_progress_copy", A(12324)),
    (12328, "_pg_user_mappings", A(12329)),
    (12333, "_pg_replication_origin_status", A(12334)),
    (12337, "_pg_stat_subscription_stats", A(12338)),
    (13220, "_cardinal_number", A(13221)),
    (13223, "_character_data", A(13224)),
    (13225, "_sql_identifier", A(13226)),
    (13228, "_information_schema_catalog_name", A(13229)),
    (13231, "_time_stamp", A(13232)),
    (13233, "_yes_or_no", A(13234)),
    (13237, "_applicable_roles", A(13238)),
    (13242, "_administrable_role_authorizations", A(13243)),
    (13246, "_attributes", A(13247)),
    (13251, "_character_sets", A(13252)),
    (13256, "_check_constraint_routine_usage", A(13257)),
    (13261, "_check_constraints", A(13262)),
    (13266, "_collations", A(13267)),
    (13271, "_collation_character_set_applicability", A(13272)),
    (13276, "_column_column_usage", A(13277)),
    (13281, "_column_domain_usage", A(13282)),
    (13286, "_column_privileges", A(13287)),
    (13291, "_column_udt_usage", A(13292)),
    (13296, "_columns", A(13297)),
    (13301, "_constraint_column_usage", A(13302)),
    (13306, "_constraint_table_usage", A(13307)),
    (13311, "_domain_constraints", A(13312)),
    (13316, "_domain_udt_usage", A(13317)),
    (13321, "_domains", A(13322)),
    (13326, "_enabled_roles", A(13327)),
    (13330, "_key_column_usage", A(13331)),
    (13335, "_parameters", A(13336)),
    (13340, "_referential_constraints", A(13341)),
    (13345, "_role_column_grants", A(13346)),
    (13349, "_routine_column_usage", A(13350)),
    (13354, "_routine_privileges", A(13355)),
    (13359, "_role_routine_grants", A(13360)),
    (13363, "_routine_routine_usage", A(13364)),
    (13368, "_routine_sequence_usage", A(13369)),
    (13373, "_routine_table_usage", A(13374)),
    (13378, "_routines", A(13379)),
    (13383, "_schemata", A(13384)),
    (13387, "_sequences", A(13388)),
    (13392, "_sql_features", A(13393)),
    (13397, "_sql_implementation_info", A(13398)),
    (13402, "_sql_parts", A(13403)),
    (13407, "_sql_sizing", A(13408)),
    (13412, "_table_constraints", A(13413)),
    (13417, "_table_privileges", A(13418)),
    (13422, "_role_table_grants", A(13423)),
    (13426, "_tables", A(13427)),
    (13431, "_transforms", A(13432)),
    (13436, "_triggered_update_columns", A(13437)),
    (13441, "_triggers", A(13442)),
    (13446, "_udt_privileges", A(13447)),
    (13451, "_role_udt_grants", A(13452)),
    (13455, "_usage_privileges", A(13456)),
    (13460, "_role_usage_grants", A(13461)),
    (13464, "_user_defined_types", A(13465)),
    (13469, "_view_column_usage", A(13470)),
    (13474, "_view_routine_usage", A(13475)),
    (13479, "_view_table_usage", A(13480)),
    (13484, "_views", A(13485)),
    (13489, "_data_type_privileges", A(13490)),
    (13494, "_element_types", A(13495)),
    (13499, "__pg_foreign_table_columns", A(13500)),
    (13504, "_column_options", A(13505)),
    (13508, "__pg_foreign_data_wrappers", A(13509)),
    (13512, "_foreign_data_wrapper_options", A(13513)),
    (13516, "_foreign_data_wrappers", A(13517)),
    (13520, "__pg_foreign_servers", A(13521)),
    (13525, "_foreign_server_options", A(13526)),
    (13529, "_foreign_servers", A(13530)),
    (13533, "__pg_foreign_tables", A(13534)),
    (13538, "_foreign_table_options", A(13539)),
    (13542, "_foreign_tables", A(13543)),
    (13546, "__pg_user_mappings", A(13547)),
    (13551, "_user_mapping_options", A(13552)),
    (13556, "_user_mappings", A(13557)),
];

/// Types of one database: builtins known statically, user types added from [`INTROSPECTION_SQL`] rows.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeInfo>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TypeRegistry {
    pub fn new() -> Self {
        let mut types = HashMap::with_capacity(BUILTINS.len() + 64);
        for &(oid, name, b) in BUILTINS {
            let kind = match b {
                S => TypeKind::Scalar,
                R => TypeKind::Range,
                O => TypeKind::Other,
                A(elem) => TypeKind::Array { elem },
            };
            types.insert(oid, TypeInfo { oid, name: name.to_string(), kind });
        }
        TypeRegistry { types }
    }

    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// OIDs, among `oids` and everything reachable from them through domains, arrays and
    /// composite fields, that the registry does not know yet. Each appears once, in discovery order.
    pub fn missing(&self, oids: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<u32> = oids.iter().rev().copied().collect();
        while let Some(oid) = stack.pop() {
            // 0 is "no type" (e.g. an unresolved parameter); nothing to learn about it.
            if oid == 0 || !seen.insert(oid) {
                continue;
            }
            match self.types.get(&oid) {
                None => out.push(oid),
                Some(info) => match &info.kind {
                    TypeKind::Domain { base } => stack.push(*base),
                    TypeKind::Array { elem } => stack.push(*elem),
                    TypeKind::Composite { fields } => {
                        stack.extend(fields.iter().rev().map(|(_, t)| *t));
                    }
                    _ => {}
                },
            }
        }
        out
    }

    /// Adds the rows of [`INTROSPECTION_SQL`]. Nothing is added unless every row parses.
    pub fn add_rows(&mut self, rows: &[Vec<Option<String>>]) -> Result<(), String> {
        let mut parsed = Vec::with_capacity(rows.len());
        for row in rows {
            parsed.push(parse_row(row)?);
        }
        for info in parsed {
            self.types.insert(info.oid, info);
        }
        Ok(())
    }

    /// Registers one type directly (tests, or callers that learned a type some other way).
    pub fn insert(&mut self, info: TypeInfo) {
        self.types.insert(info.oid, info);
    }
}

fn parse_row(row: &[Option<String>]) -> Result<TypeInfo, String> {
    if row.len() != 7 {
        return Err(format!("type row has {} columns, expected 7", row.len()));
    }
    let col = |i: usize, what: &str| -> Result<&str, String> {
        row[i].as_deref().ok_or_else(|| format!("type row: {what} is NULL"))
    };
    let num = |i: usize, what: &str| -> Result<u32, String> {
        let s = col(i, what)?;
        s.parse::<u32>().map_err(|_| format!("type row: bad {what} {s:?}"))
    };
    let oid = num(0, "oid")?;
    let name = col(1, "typname")?.to_string();
    let typtype = col(2, "typtype")?;
    let elem = num(3, "typelem")?;
    let base = num(4, "typbasetype")?;
    let kind = match typtype {
        "e" => TypeKind::Enum,
        "d" => TypeKind::Domain { base },
        "r" => TypeKind::Range,
        "c" => {
            let names = text_array_1d(col(5, "attribute names")?)?;
            let oids = text_array_1d(col(6, "attribute types")?)?;
            if names.len() != oids.len() {
                return Err(format!("type {oid}: {} names, {} types", names.len(), oids.len()));
            }
            let mut fields = Vec::with_capacity(names.len());
            for (n, t) in names.into_iter().zip(oids) {
                let n = n.ok_or_else(|| format!("type {oid}: NULL attribute name"))?;
                let t = t
                    .as_deref()
                    .and_then(|t| t.parse::<u32>().ok())
                    .ok_or_else(|| format!("type {oid}: bad attribute type {t:?}"))?;
                fields.push((n, t));
            }
            TypeKind::Composite { fields }
        }
        "b" if elem != 0 => TypeKind::Array { elem },
        "b" => TypeKind::Scalar,
        "m" | "p" => TypeKind::Other,
        other => return Err(format!("type {oid}: unknown typtype {other:?}")),
    };
    Ok(TypeInfo { oid, name, kind })
}

/// Elements of a one-dimensional array literal; `NULL` elements are `None`.
fn text_array_1d(s: &str) -> Result<Vec<Option<String>>, String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut err = None;
    super::literal::walk_array(s.as_bytes(), b',', &mut |ev| match ev {
        super::literal::ArrayEvent::Open => {
            depth += 1;
            if depth > 1 {
                err = Some("nested array where a flat one was expected".to_string());
            }
        }
        super::literal::ArrayEvent::Close => depth -= 1,
        super::literal::ArrayEvent::Elem(e) => {
            items.push(e.map(|b| String::from_utf8_lossy(b).into_owned()));
        }
    })
    .map_err(|_| format!("malformed array literal {s:?}"))?;
    match err {
        Some(e) => Err(e),
        None => Ok(items),
    }
}

/// The catalog rows [`INTROSPECTION_SQL`] returned on a PostgreSQL 15 test cluster after:
/// `CREATE TYPE mood AS ENUM ('happy','sad ok'); CREATE TYPE inner_t AS (x int4, y text);
/// CREATE TYPE outer_t AS (id int8, tags text[], inn inner_t, m mood, n numeric);
/// CREATE DOMAIN posint AS int4 CHECK (VALUE > 0); CREATE DOMAIN tagarr AS text[];
/// CREATE TYPE withts AS (t timestamptz, r int4range);
/// CREATE TYPE dropt AS (a int, gone text, "we,ird ""name" int[]); ALTER TYPE dropt DROP ATTRIBUTE gone;`
#[cfg(test)]
pub(crate) const TEST_ROWS: &[[&str; 7]] = &[
    ["16384", "_mood", "b", "16385", "0", "{}", "{}"],
    ["16385", "mood", "e", "0", "0", "{}", "{}"],
    ["16390", "_inner_t", "b", "16391", "0", "{}", "{}"],
    ["16391", "inner_t", "c", "0", "0", "{x,y}", "{23,25}"],
    ["16393", "_outer_t", "b", "16394", "0", "{}", "{}"],
    ["16394", "outer_t", "c", "0", "0", "{id,tags,inn,m,n}", "{20,1009,16391,16385,1700}"],
    ["16396", "posint", "d", "0", "23", "{}", "{}"],
    ["16399", "tagarr", "d", "0", "1009", "{}", "{}"],
    ["16402", "withts", "c", "0", "0", "{t,r}", "{1184,3904}"],
    ["16409", "dropt", "c", "0", "0", r#"{a,"we,ird \"name"}"#, "{23,1007}"],
];

#[cfg(test)]
pub(crate) fn test_rows(rows: &[[&str; 7]]) -> Vec<Vec<Option<String>>> {
    rows.iter().map(|r| r.iter().map(|c| Some(c.to_string())).collect()).collect()
}

#[cfg(test)]
pub(crate) fn test_registry() -> TypeRegistry {
    let mut reg = TypeRegistry::new();
    reg.add_rows(&test_rows(TEST_ROWS)).unwrap();
    reg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_known() {
        let reg = TypeRegistry::new();
        for oid in [
            BOOL,
            BYTEA,
            CHAR,
            NAME,
            INT8,
            INT2,
            INT4,
            TEXT,
            OID,
            JSON,
            XML,
            FLOAT4,
            FLOAT8,
            MONEY,
            INET,
            CIDR,
            MACADDR,
            BPCHAR,
            VARCHAR,
            DATE,
            TIME,
            TIMESTAMP,
            TIMESTAMPTZ,
            INTERVAL,
            TIMETZ,
            BIT,
            VARBIT,
            NUMERIC,
            UUID,
            JSONB,
            RECORD,
            VOID,
            UNKNOWN,
        ] {
            assert!(reg.get(oid).is_some(), "{oid}");
        }
        assert_eq!(reg.get(1007).unwrap().kind, TypeKind::Array { elem: INT4 });
        assert_eq!(reg.get(1007).unwrap().name, "_int4");
        assert_eq!(reg.get(2287).unwrap().kind, TypeKind::Array { elem: RECORD });
        assert_eq!(reg.get(3807).unwrap().kind, TypeKind::Array { elem: JSONB });
        assert_eq!(reg.get(3904).unwrap().kind, TypeKind::Range);
        assert_eq!(reg.get(3910).unwrap().kind, TypeKind::Range);
        assert_eq!(reg.get(INT4).unwrap().kind, TypeKind::Scalar);
        // name and point have a typelem but are not arrays.
        assert_eq!(reg.get(NAME).unwrap().kind, TypeKind::Scalar);
        assert_eq!(reg.get(POINT).unwrap().kind, TypeKind::Scalar);
        assert!(reg.get(16384).is_none());
        assert!(reg.missing(&[INT4, 1009, 1185, 3807, 0]).is_empty());
    }

    #[test]
    fn missing_loop_discovers_reachable_types() {
        let mut reg = TypeRegistry::new();
        assert_eq!(reg.missing(&[INT4, 16393, 16396]), vec![16393, 16396]);
        let row = |oid: &str| TEST_ROWS.iter().filter(|r| r[0] == oid).copied().collect::<Vec<_>>();
        reg.add_rows(&test_rows(&row("16393"))).unwrap();
        reg.add_rows(&test_rows(&row("16396"))).unwrap();
        assert_eq!(reg.missing(&[INT4, 16393, 16396]), vec![16394]);
        reg.add_rows(&test_rows(&row("16394"))).unwrap();
        // outer_t's fields: text[] and numeric are builtin; inner_t and mood are not.
        assert_eq!(reg.missing(&[16393, 16396]), vec![16391, 16385]);
        reg.add_rows(&test_rows(&row("16391"))).unwrap();
        reg.add_rows(&test_rows(&row("16385"))).unwrap();
        assert!(reg.missing(&[16393, 16396]).is_empty());
        // Builtin composite row types (e.g. pg_type, 71) are not in the static table.
        assert_eq!(reg.missing(&[210]), vec![71]);
    }

    #[test]
    fn add_rows_parses_every_kind() {
        let reg = test_registry();
        assert_eq!(reg.get(16385).unwrap().kind, TypeKind::Enum);
        assert_eq!(reg.get(16384).unwrap().kind, TypeKind::Array { elem: 16385 });
        assert_eq!(reg.get(16396).unwrap().kind, TypeKind::Domain { base: INT4 });
        assert_eq!(reg.get(16399).unwrap().kind, TypeKind::Domain { base: 1009 });
        assert_eq!(
            reg.get(16394).unwrap().kind,
            TypeKind::Composite {
                fields: vec![
                    ("id".into(), INT8),
                    ("tags".into(), 1009),
                    ("inn".into(), 16391),
                    ("m".into(), 16385),
                    ("n".into(), NUMERIC),
                ]
            }
        );
        assert_eq!(
            reg.get(16409).unwrap().kind,
            TypeKind::Composite { fields: vec![("a".into(), INT4), ("we,ird \"name".into(), 1007)] }
        );
        assert_eq!(reg.get(16394).unwrap().name, "outer_t");
    }

    #[test]
    fn add_rows_rejects_bad_rows_atomically() {
        let mut reg = TypeRegistry::new();
        let good = test_rows(&[["20000", "e1", "e", "0", "0", "{}", "{}"]]);
        let bad: &[[&str; 7]] = &[
            ["x", "t", "b", "0", "0", "{}", "{}"],
            ["20001", "t", "z", "0", "0", "{}", "{}"],
            ["20001", "t", "c", "0", "0", "{a,b}", "{23}"],
            ["20001", "t", "c", "0", "0", "{a}", "{x}"],
            ["20001", "t", "c", "0", "0", "{a", "{23}"],
            ["20001", "t", "c", "0", "0", "{{a}}", "{{23}}"],
        ];
        for b in bad {
            let mut rows = good.clone();
            rows.extend(test_rows(&[*b]));
            assert!(reg.add_rows(&rows).is_err(), "{b:?}");
            assert!(reg.get(20000).is_none());
        }
        assert!(reg.add_rows(&[vec![None; 7]]).is_err());
        assert!(reg.add_rows(&[vec![Some("1".into())]]).is_err());
        reg.add_rows(&good).unwrap();
        assert_eq!(reg.get(20000).unwrap().kind, TypeKind::Enum);
    }

    #[test]
    fn introspection_sql_shape() {
        assert!(INTROSPECTION_SQL.contains("$1::text::pg_catalog.oid[]"));
        assert!(!INTROSPECTION_SQL.contains("$2"));
    }
}

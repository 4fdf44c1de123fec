// pyscheduler_bench: the performance table of issue 4. Every row of the issue is measured
// here together with a baseline taken in the same run (an inline floor, a plain pybind11
// embedding, or our own single-producer/serial figure), the ratio, the target and
// PASS/FAIL. Numbers are medians of >= 5 repetitions with baseline and subject
// interleaved, so machine noise hits both alike.
//
//   pyscheduler_bench [--quick] [--json] [--reps N] [--rows id,id,...] [--python-dir DIR]
//
// Exit status: 0 when the table was produced (a missed target reads FAIL in the table),
// 1 on bad arguments, 2 on an error while measuring.
//
// This file owns the command line and the order of the rows; bench.hpp lists the files
// that measure them.
#include "bench.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace pysched_bench {
namespace {

[[noreturn]] void usage(const char* argv0, int status) {
  std::fprintf(status == 0 ? stdout : stderr,
               "usage: %s [--quick] [--json] [--reps N] [--rows ID,ID,...] [--python-dir DIR]\n"
               "  --quick       fewer items (CI smoke); the RSS row keeps 120k items\n"
               "  --json        print the table as JSON instead of text\n"
               "  --json-out F  print the text table and also write the JSON to file F\n"
               "  --reps N      repetitions per row (median reported; default 5, at least 1)\n"
               "  --rows IDS    only these rows: queued_b256 producers4 queued_b1 latency sync\n"
               "                idle8 rss sleep2 staging batch_delay (for profiling one path);\n"
               "                queued_b256 includes its _f/_c/_l rows, queued_b1 its _f row;\n"
               "                tensor rows: tensor_b256 tensor_b256_cb tensor_b256_future tensor_b256_f\n"
               "                tensor_b256_fill tensor_b256_fill_cb tensor_b1 numpy_list_b256 (each with\n"
               "                its floor), or tensor for all of them\n"
               "  --python-dir  where pysched_bench.py lives (default: the source tree's)\n"
               "  --workers N   worker pool size (default: the library's, the number of CPUs, >= 4)\n"
               "  --profile P   run only our side of one path, --reps times, no baseline and no\n"
               "                table (for perf record / callgrind): queued_b256 queued_b256_f\n"
               "                queued_b256_c queued_b256_l queued_b1 queued_b1_f latency sync staged\n"
               "                in_commit tensor_b256 tensor_b256_fill tensor_floor tensor_b1\n"
               "                tensor_floor_b1 numpy_list_b256\n",
               argv0);
  std::exit(status);
}

Config parse_args(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", name);
        usage(argv[0], 1);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      c.quick = true;
    } else if (a == "--json") {
      c.json = true;
    } else if (a == "--plain") {
      c.json = false;
    } else if (a == "--reps") {
      c.reps = std::max(1, std::atoi(value("--reps").c_str()));
    } else if (a == "--rows") {
      std::stringstream ss(value("--rows"));
      for (std::string id; std::getline(ss, id, ',');) {
        if (!id.empty()) c.rows.insert(id);
      }
    } else if (a == "--python-dir") {
      c.python_dir = value("--python-dir");
    } else if (a == "--json-out") {
      c.json_out = value("--json-out");
    } else if (a == "--workers") {
      c.workers = static_cast<std::uint32_t>(std::max(0, std::atoi(value("--workers").c_str())));
    } else if (a == "--profile") {
      c.profile = value("--profile");
    } else if (a == "--rss-child") {
      c.rss_child = true;
      c.rss_mode = value("--rss-child");
    } else if (a == "-h" || a == "--help") {
      usage(argv[0], 0);
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
      usage(argv[0], 1);
    }
  }
  if (c.quick) {
    c.queued_items = 20'000;
    c.producer_items = 5'000;
    c.batch1_items = 5'000;
    c.plain_items = 2'000;
    c.latency_samples = 60;
    c.sync_calls = 20'000;
    c.idle_reps = 1;
    c.sleep_items = 5;
    c.staging_items = 80;
    c.delay_items = 150;
    c.tensor_items = 10'000;
    c.tensor_b1_items = 5'000;
  }
  return c;
}

// The table's rows, in the order they are measured and printed. `id` is what --rows
// selects (unless `wanted` says otherwise) and what the progress line names.
struct Family {
  const char* id;
  RowFamily measure;
  bool (*wanted)(const Config&) = nullptr;  // nullptr: cfg.want(id)
};
const Family kFamilies[] = {
    {"queued_b256", rows_queued_b256},
    {"producers4", rows_producers4},
    {"queued_b1", rows_queued_b1},
    {"latency", rows_latency},
    {"sync", rows_sync},
    {"sleep2", rows_sleep2},
    {"staging", rows_staging},
    {"batch_delay", rows_batch_delay},
    {"tensor", rows_tensor, tensor_rows_wanted},
    {"rss", rows_rss},
    {"idle8", rows_idle8},  // last: the process is otherwise idle
};

// The families' --profile paths, tried in turn.
const ProfileFamily kProfiles[] = {profile_tensor, profile_queued, profile_latency, profile_staging};

int profile(const Config& cfg, PyManager& mgr) {
  for (ProfileFamily family : kProfiles) {
    if (const std::optional<int> rc = family(cfg, mgr)) return *rc;
  }
  std::fprintf(stderr, "unknown --profile path: %s\n", cfg.profile.c_str());
  return 1;
}

int run(const Config& cfg) {
  // numpy's BLAS on the calling thread only, unless the environment says otherwise: each
  // floor is ONE thread (the definition), and on two cores a BLAS helper thread,
  // which spins between calls, takes the core a tensor handler's producer or worker needs
  // (a server that embeds Python sets this too). Before Python starts (numpy reads it at
  // import); the environment block reports it.
  for (const char* var : {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}) setenv(var, "1", 0);
  if (cfg.rss_child) return rss_child(cfg);
  PyManager mgr(manager_options(cfg));
  mgr.add_path(cfg.python_dir);
  load_py_funcs();
  if (!cfg.profile.empty()) {
    const int rc = profile(cfg, mgr);
    free_py_funcs();
    return rc;
  }
  Environment env = describe(cfg, mgr);
  std::vector<Row> rows;
  const auto t0 = Clock::now();
  for (const Family& family : kFamilies) {
    if (!(family.wanted ? family.wanted(cfg) : cfg.want(family.id))) continue;
    if (!cfg.json) std::fprintf(stderr, "[bench] %s...\n", family.id);
    family.measure(cfg, mgr, rows);
  }
  env.add("load avg (end)", read_first_line("/proc/loadavg"));
  env.add("parallelism (end)", parallelism_text());
  env.add("duration", fmt(elapsed_ns(t0, Clock::now()) / 1e9, "s"));
  free_py_funcs();
  if (cfg.json) {
    print_json(stdout, env, rows);
  } else {
    print_plain(env, rows);
  }
  if (!cfg.json_out.empty()) {
    std::FILE* f = std::fopen(cfg.json_out.c_str(), "w");
    if (!f) throw std::runtime_error("cannot write " + cfg.json_out + ": " + std::strerror(errno));
    print_json(f, env, rows);
    std::fclose(f);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace pysched_bench

int main(int argc, char** argv) {
  const pysched_bench::Config cfg = pysched_bench::parse_args(argc, argv);
  try {
    return pysched_bench::run(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pyscheduler_bench: error: %s\n", e.what());
    return 2;
  }
}

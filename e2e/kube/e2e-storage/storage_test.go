// Package e2estorage is upstream's e2e.test cut down to the storage suites
// for an external CSI driver (-storage.testdriver=FILE, e2e/k8s-storage/):
// the same flags and suite setup as test/e2e/e2e_test.go and e2e.go of the
// k8s.io/kubernetes version go.mod pins, without the other SIGs' tests and
// the cloud providers they pull in.
package e2estorage

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/testinit" // -v, -vmodule and the other klog flags, as in e2e.test
	"k8s.io/component-base/version"         // -version prints what kube-tools.sh stamped
	"k8s.io/klog/v2"

	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"                      // -storage.testdriver is registered there
	e2enode "k8s.io/kubernetes/test/e2e/framework/node"                // suite setup: nodes schedulable
	e2epod "k8s.io/kubernetes/test/e2e/framework/pod"                  // suite setup: kube-system pods Ready
	"k8s.io/kubernetes/test/e2e/framework/testfiles"                   // serves the embedded manifests
	_ "k8s.io/kubernetes/test/e2e/storage/external"                    // the suites for a driver described in YAML
	e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests" // storage-csi/ manifests some tests load

	// The framework extensions upstream's e2e_test.go installs, so a test
	// behaves here as it does in e2e.test:
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"   // on failure, dump the namespace's events and pods
	_ "k8s.io/kubernetes/test/e2e/framework/metrics/init" // makes -gather-metrics-at-teardown work
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"    // after each test, all nodes Ready again (7 min)
	_ "k8s.io/kubernetes/test/utils/ktesting/format"      // failures print API objects as YAML
)

func TestMain(m *testing.M) {
	versionFlag := flag.Bool("version", false, "Displays version information.")
	// Before flag.Parse: -storage.testdriver lives in config.Flags, and its
	// Set() defines the Ginkgo specs while flag.Parse runs.
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	if *versionFlag {
		fmt.Println(version.Get())
		os.Exit(0)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unknown additional command line arguments: %s\n", flag.Args())
		os.Exit(1)
	}
	// The any-volume-datasource and snapshot-metadata tests load manifests by
	// repo path; the embedded copy serves them without a checkout.
	testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
	// Also handles -list-tests and -list-labels (and exits), before any
	// cluster access.
	framework.AfterReadingAllFlags(&framework.TestContext)
	if framework.TestContext.RepoRoot != "" {
		testfiles.AddFileSource(testfiles.RootFileSource{Root: framework.TestContext.RepoRoot})
	}
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	logs.InitLogs()
	defer logs.FlushLogs()
	klog.EnableContextualLogging(true)
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "ocfs2-csi external storage e2e", suiteConfig, reporterConfig)
}

// Upstream's setupSuite (test/e2e/e2e.go) without its optional parts
// (-clean-start, -prepull-images, version logging), on Ginkgo process 1
// only: the tests start once every node is schedulable and kube-system is
// Ready. NumNodes is filled in as upstream does, for e2eskipper's node-count
// checks (the storage suites themselves do not read it).
var _ = ginkgo.SynchronizedBeforeSuite(func(ctx context.Context) []byte {
	c, err := framework.LoadClientset()
	framework.ExpectNoError(err, "loading client")
	timeouts := framework.NewTimeoutContext()
	framework.ExpectNoError(e2enode.WaitForAllNodesSchedulable(ctx, c, timeouts.NodeSchedulable))
	if framework.TestContext.CloudConfig.NumNodes == framework.DefaultNumNodes {
		nodes, err := e2enode.GetReadySchedulableNodes(ctx, c)
		framework.ExpectNoError(err)
		framework.TestContext.CloudConfig.NumNodes = len(nodes.Items)
	}
	framework.ExpectNoError(e2epod.WaitForAlmostAllPodsReady(ctx, c, "kube-system",
		framework.TestContext.MinStartupPods, framework.TestContext.AllowedNotReadyNodes, timeouts.SystemPodsStartup))
	return nil
}, func(ctx context.Context, _ []byte) {})
